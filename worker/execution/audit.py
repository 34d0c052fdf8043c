"""The `mcp_executions` row of a task: one row per Celery task id, across all its attempts.

A run's lifecycle is a small status enum; every transition is persisted here and nowhere else:

    (none) --begin--> running --succeed--> success
                         |------fail(final=False)--> retrying --begin--> running ...
                         |------fail(final=True)---> error
                         '------cancel-------------> cancelled   (`worker.execution.pauses`)

`begin` is idempotent per task id: a redelivered or re-sent task updates the same row, and a
task whose row already says `success` gets the stored row back so the caller can return it
without calling the server again.

Claiming is one statement, an INSERT whose ON CONFLICT update is conditional, that also takes a
lease (`lease_owner`, `lease_expires_at`): a second copy of a task that is still running (Redis
redelivers a task that outlives the visibility timeout) finds the row `running` under a live lease
and does not claim it; the caller waits for the holder's outcome, and takes over only when the
lease has run out, which means the holder died (a SIGKILLed worker).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from worker.db.models import McpExecution
from worker.db.prepared import Prepared

TRUNCATION_MARKER = "__truncated__"
ERROR_MESSAGE_MAX = 2000
PROGRESS_MESSAGE_MAX = 500  # the column's width


class Status(enum.StrEnum):
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"  # stopped by an operator (`worker.execution.cancel`): final
    INPUT_REQUIRED = "input_required"  # the server waits for input (`executions respond`)


FINAL = frozenset({Status.SUCCESS, Status.ERROR, Status.CANCELLED})  # a row never leaves these


@dataclass(frozen=True)
class Begun:
    """What `begin` found: the row id and this attempt's number when claimed, the stored result
    when the row already succeeded, or the lease expiry when another copy holds the row."""

    id: int
    attempts: int
    already_succeeded: bool
    result: Any = None
    execution_time_ms: int | None = None
    held_until: datetime | None = None
    cancelled: bool = False
    # The call runs as an MCP task on the server: this attempt polls it instead of calling again.
    server_task_id: str | None = None

    @property
    def claimed(self) -> bool:
        return not self.already_succeeded and self.held_until is None and not self.cancelled


def _now() -> datetime:
    return datetime.now(UTC)


_table = cast(sa.Table, McpExecution.__table__)
# Statements are built once (per dialect) and hit SQLAlchemy's compiled cache: building ORM
# statements on every call cost more than their round trips.
_CLAIMS: dict[str, Any] = {}


def claim_statement(dialect: str) -> Any:
    """INSERT the row already claimed, or, when it exists, take it over only if it has not
    succeeded and nobody else holds a live lease on it; RETURNING the row when claimed."""
    stmt = _CLAIMS.get(dialect)
    if stmt is not None:
        return stmt
    c = _table.c
    now: sa.BindParameter[datetime] = sa.bindparam("b_now")
    owner: sa.BindParameter[str] = sa.bindparam("b_owner")
    expires: sa.BindParameter[datetime] = sa.bindparam("b_expires")
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(_table)
        .values(
            task_id=sa.bindparam("b_task_id"),
            user_id=sa.bindparam("b_user_id"),
            tool_desc=sa.bindparam("b_service"),
            tool_name=sa.bindparam("b_tool"),
            params=sa.bindparam("b_params", type_=_table.c.params.type),
            status=Status.RUNNING.value,
            attempts=1,
            started_at=now,
            lease_owner=owner,
            lease_expires_at=expires,
        )
        .on_conflict_do_update(
            index_elements=["task_id"],
            set_={
                "status": Status.RUNNING.value,
                # Polling a server's task is not another attempt at the call.
                "attempts": c.attempts
                + sa.case((c.server_task_id.is_(None), sa.literal_column("1")), else_=sa.literal_column("0")),
                "started_at": sa.func.coalesce(c.started_at, now),
                "finished_at": None,
                "lease_owner": owner,
                "lease_expires_at": expires,
            },
            where=sa.and_(
                # Two comparisons, not NOT IN: a prepared statement cannot expand a list.
                c.status != Status.SUCCESS.value,
                c.status != Status.CANCELLED.value,
                sa.or_(
                    c.status != Status.RUNNING.value,
                    # A server's task between two polls: nobody holds the row.
                    c.lease_owner.is_(None),
                    c.lease_expires_at.is_(None),
                    c.lease_expires_at < now,
                    c.lease_owner == owner,
                ),
            ),
        )
        .returning(c.id, c.attempts, c.server_task_id)
    )
    _CLAIMS[dialect] = stmt
    return stmt


_FIND = sa.select(
    _table.c.id,
    _table.c.status,
    _table.c.attempts,
    _table.c.result,
    _table.c.execution_time_ms,
    _table.c.lease_expires_at,
).where(_table.c.task_id == sa.bindparam("b_task_id"))


def _connection(db: Session | Connection) -> Connection:
    return db if isinstance(db, Connection) else db.connection()


def _dialect(db: Session | Connection) -> str:
    return db.dialect.name if isinstance(db, Connection) else db.get_bind().dialect.name


def claim_values(
    *, task_id: str, user_id: str, service: str, tool: str, params: Any, owner: str, lease_seconds: float
) -> dict[str, Any]:
    """The bind parameters of `claim_statement` for one attempt (`b_user_id` and `b_service` are
    also the service lookup's, so a caller can run both in one statement)."""
    now = _now()
    return {
        "b_task_id": task_id,
        "b_user_id": user_id,
        "b_service": service,
        "b_tool": tool,
        "b_params": params,
        "b_now": now,
        "b_owner": owner,
        "b_expires": now + timedelta(seconds=lease_seconds),
    }


def begin(session: Session | Connection, values: dict[str, Any]) -> Begun:
    """Create or reopen the row for `values["b_task_id"]`, claim it and count this attempt.

    One statement (an upsert whose update only applies when the row has not succeeded and no
    other owner holds a live lease on it), so one round trip; a second one only when it was not
    claimed, to say why (`unclaimed`).
    """
    claimed = session.execute(claim_statement(_dialect(session)), values).one_or_none()
    if claimed is not None:
        return Begun(claimed.id, claimed.attempts, False, server_task_id=claimed.server_task_id)
    return unclaimed(session, values)


def unclaimed(session: Session | Connection, values: dict[str, Any]) -> Begun:
    """Why the claim with `values` took nothing: the row succeeded already, or another owner
    holds its lease (until when)."""
    row = session.execute(_FIND, {"b_task_id": values["b_task_id"]}).one()
    if row.status == Status.SUCCESS.value:
        return Begun(row.id, row.attempts, True, row.result, row.execution_time_ms)
    held = _utc(row.lease_expires_at) or values["b_expires"]
    cancelled = row.status == Status.CANCELLED.value
    return Begun(row.id, row.attempts, False, held_until=None if cancelled else held, cancelled=cancelled)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they are stored in UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def encode_result(result: Any, max_bytes: int) -> tuple[Any, str]:
    """`result`, or a marked preview of it when its JSON is larger than `max_bytes`, with the JSON
    text of what is kept: encoded once, for the size check, the row and the task's summary."""
    encoded = json.dumps(result, ensure_ascii=False, default=str)
    if len(encoded) * 4 <= max_bytes:
        return result, encoded  # even all 4-byte UTF-8 characters fit: no need to count
    raw = encoded.encode("utf-8")
    if len(raw) <= max_bytes:
        return result, encoded
    preview = raw[: max(0, max_bytes - 256)].decode("utf-8", errors="ignore")
    bounded = {TRUNCATION_MARKER: True, "original_bytes": len(raw), "preview": preview}
    return bounded, json.dumps(bounded, ensure_ascii=False)


def _succeed_statement(with_params: bool) -> Any:
    values: dict[str, Any] = {
        "status": Status.SUCCESS.value,
        # Bound as the JSON text `encode_result` made: the column parses it, nothing encodes it again.
        "result": sa.bindparam("b_result", type_=sa.Text()),
        "error_message": None,
        "execution_time_ms": sa.bindparam("b_elapsed"),
        "finished_at": sa.bindparam("b_finished"),
        "lease_expires_at": None,
        "output_valid": sa.bindparam("b_output_valid", type_=sa.Boolean()),
        "output_error": sa.bindparam("b_output_error", type_=sa.Text()),
    }
    if with_params:
        values["params"] = sa.bindparam("b_params", type_=_table.c.params.type)
    # Only the lease's holder records the outcome: a holder that lost its lease (a stopped
    # worker that resumed after another delivery took the row over) writes nothing.
    return (
        sa.update(_table)
        .where(_table.c.task_id == sa.bindparam("b_task_id"), _table.c.lease_owner == sa.bindparam("b_owner"))
        .values(**values)
    )


# Prepared: one of them runs on every task.
_SUCCEED = {True: Prepared(_succeed_statement(True)), False: Prepared(_succeed_statement(False))}


def succeed(
    session: Session | Connection,
    task_id: str,
    *,
    result: Any,
    elapsed_ms: int,
    owner: str,
    params: Any = None,
    encoded: str | None = None,
    output_valid: bool | None = None,
    output_error: str | None = None,
) -> bool:
    """Mark the row `success` with its result, timing (`encoded`: the result's JSON, if made) and
    outputSchema check, if `owner` still holds its lease; returns whether it did."""
    values = {
        "b_task_id": task_id,
        "b_owner": owner,
        "b_result": encoded if encoded is not None else json.dumps(result, ensure_ascii=False, default=str),
        "b_elapsed": elapsed_ms,
        "b_finished": _now(),
        "b_output_valid": output_valid,
        "b_output_error": output_error[:ERROR_MESSAGE_MAX] if output_error is not None else None,
    }
    if params is not None:
        values["b_params"] = params
    return bool(_SUCCEED[params is not None].execute(_connection(session), values).rowcount)


def fail(
    session: Session,
    task_id: str,
    *,
    message: str,
    elapsed_ms: int | None,
    final: bool,
    params: Any = None,
    owner: str | None = None,
    retry_within: float | None = None,
    override_success: bool = False,
) -> bool:
    """Mark the row `error` (final) or `retrying` with a one-line message; returns whether it did.

    With `owner`, only while that owner holds the row's lease. A `retrying` row keeps a deadline
    in `lease_expires_at`: its retry should have been claimed within `retry_within` seconds, or
    its message was lost (`mark_stuck` then ends it). A row that already says `success` is left
    alone unless `override_success` (a report whose data call succeeded but whose template then
    failed).
    """
    now = _now()
    values: dict[str, Any] = {
        "status": (Status.ERROR if final else Status.RETRYING).value,
        "error_message": " ".join(message.split())[:ERROR_MESSAGE_MAX],
        "execution_time_ms": elapsed_ms,
        "finished_at": now if final else None,
        "lease_expires_at": None if final or retry_within is None else now + timedelta(seconds=retry_within),
    }
    if params is not None:
        values["params"] = params
    if elapsed_ms is None:
        del values["execution_time_ms"]
    query = sa.update(McpExecution).where(McpExecution.task_id == task_id)
    if owner is not None:
        query = query.where(McpExecution.lease_owner == owner)
    if not override_success:
        query = query.where(McpExecution.status != Status.SUCCESS.value)
    result: Any = session.execute(query.values(**values))
    return bool(result.rowcount)


def give_back(connection: Connection, task_id: str, *, owner: str, message: str, retry_within: float) -> bool:
    """Undo this attempt's claim, the call not having started (its service had no free slot):
    the row waits as `retrying`, with its attempt not counted, until the re-queued delivery
    claims it (within `retry_within` seconds, or `mark_stuck` ends it). Only while `owner` holds
    the lease; returns whether it did."""
    c = _table.c
    statement = (
        sa.update(_table)
        .where(c.task_id == task_id, c.lease_owner == owner, c.status == Status.RUNNING.value)
        .values(
            status=Status.RETRYING.value,
            attempts=c.attempts - 1,
            error_message=" ".join(message.split())[:ERROR_MESSAGE_MAX],
            lease_expires_at=_now() + timedelta(seconds=retry_within),
        )
    )
    result: Any = connection.execute(statement)
    return bool(result.rowcount)


def outcome(session: Session, task_id: str) -> tuple[str, Any, str | None, int | None, datetime | None]:
    """(status, result, error_message, attempts, lease_expires_at) of the row, read fresh."""
    row = session.execute(
        sa.select(
            McpExecution.status,
            McpExecution.result,
            McpExecution.error_message,
            McpExecution.attempts,
            McpExecution.lease_expires_at,
        ).where(McpExecution.task_id == task_id)
    ).one()
    return row.status, row.result, row.error_message, row.attempts, _utc(row.lease_expires_at)


def stuck(older_than: datetime) -> sa.ColumnElement[bool]:
    """The rows whose holder is gone: `running` under a lease that ran out before `older_than`
    (their worker died and no redelivery came), or `retrying` past the deadline their retry had
    (its message was lost)."""
    return sa.and_(
        McpExecution.status.in_([Status.RUNNING.value, Status.RETRYING.value]),
        sa.func.coalesce(McpExecution.lease_expires_at, McpExecution.started_at) < older_than,
    )


def mark_stuck(session: Session, older_than: datetime, reason: str) -> int:
    """Mark the `stuck` rows as `error` with `reason`; returns how many."""
    result = session.execute(
        sa.update(McpExecution)
        .where(stuck(older_than))
        .values(status=Status.ERROR.value, error_message=reason, finished_at=_now(), lease_expires_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def get(session: Session, task_id: str) -> McpExecution | None:
    return session.scalars(sa.select(McpExecution).where(McpExecution.task_id == task_id)).one_or_none()


def _progress(row: McpExecution) -> dict[str, Any]:
    return {"progress": row.progress, "total": row.progress_total, "message": row.progress_message}


def as_dict(row: McpExecution) -> dict[str, Any]:
    """The row as JSON-ready data (params are stored redacted already)."""
    return {
        "id": row.id,
        "task_id": row.task_id,
        "user_id": row.user_id,
        "service": row.tool_desc,
        "tool": row.tool_name,
        "status": row.status,
        "attempts": row.attempts,
        "params": row.params,
        "result": row.result,
        "error_message": row.error_message,
        "execution_time_ms": row.execution_time_ms,
        "progress": None if row.progress is None else _progress(row),
        "output_valid": row.output_valid,
        "output_error": row.output_error,
        "server_task_id": row.server_task_id,
        "input_request": row.input_request,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }
