"""The `mcp_executions` row of a task: one row per Celery task id, across all its attempts.

A run's lifecycle is a small status enum; every transition is persisted here and nowhere else:

    (none) --begin--> running --succeed--> success
                         |------fail(final=False)--> retrying --begin--> running ...
                         '------fail(final=True)---> error

`begin` is idempotent per task id: a redelivered or re-sent task updates the same row, and a
task whose row already says `success` gets the stored row back so the caller can return it
without calling the server again.

Claiming is a conditional UPDATE that also takes a lease (`lease_owner`, `lease_expires_at`): a
second copy of a task that is still running (Redis redelivers a task that outlives the
visibility timeout) finds the row `running` under a live lease and does not claim it; the caller
waits for the holder's outcome, and takes over only when the lease has run out, which means the
holder died (a SIGKILLed worker).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.models import McpExecution

TRUNCATION_MARKER = "__truncated__"
ERROR_MESSAGE_MAX = 2000


class Status(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCESS = "success"
    ERROR = "error"


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

    @property
    def claimed(self) -> bool:
        return not self.already_succeeded and self.held_until is None


def _now() -> datetime:
    return datetime.now(UTC)


def _insert_ignore(session: Session, values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(McpExecution).values(**values).on_conflict_do_nothing(index_elements=["task_id"])
    session.execute(stmt)


def begin(
    session: Session,
    *,
    task_id: str,
    user_id: str,
    service: str,
    tool: str,
    params: Any,
    owner: str,
    lease_seconds: float,
) -> Begun:
    """Create or reopen the row for `task_id`, claim it for `owner` and count this attempt.

    Two statements in the caller's transaction: an insert that does nothing if the row exists,
    then a conditional update that claims it unless it already succeeded or another owner holds
    a live lease on it.
    """
    now = _now()
    expires = now + timedelta(seconds=lease_seconds)
    _insert_ignore(
        session,
        {
            "task_id": task_id,
            "user_id": user_id,
            "tool_desc": service,
            "tool_name": tool,
            "params": params,
            "status": Status.PENDING.value,
            "attempts": 0,
            "started_at": now,
        },
    )
    claimed = session.execute(
        sa.update(McpExecution)
        .where(
            McpExecution.task_id == task_id,
            McpExecution.status != Status.SUCCESS.value,
            sa.or_(
                McpExecution.status != Status.RUNNING.value,
                McpExecution.lease_expires_at.is_(None),
                McpExecution.lease_expires_at < now,
                McpExecution.lease_owner == owner,
            ),
        )
        .values(
            status=Status.RUNNING.value,
            attempts=McpExecution.attempts + 1,
            started_at=sa.func.coalesce(McpExecution.started_at, now),
            finished_at=None,
            lease_owner=owner,
            lease_expires_at=expires,
        )
        .returning(McpExecution.id, McpExecution.attempts)
    ).one_or_none()
    if claimed is not None:
        return Begun(id=claimed.id, attempts=claimed.attempts, already_succeeded=False)
    row = session.execute(
        sa.select(
            McpExecution.id,
            McpExecution.status,
            McpExecution.attempts,
            McpExecution.result,
            McpExecution.execution_time_ms,
            McpExecution.lease_expires_at,
        ).where(McpExecution.task_id == task_id)
    ).one()
    if row.status == Status.SUCCESS.value:
        return Begun(row.id, row.attempts, True, row.result, row.execution_time_ms)
    return Begun(row.id, row.attempts, False, held_until=_utc(row.lease_expires_at) or expires)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they are stored in UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def bounded_result(result: Any, max_bytes: int) -> Any:
    """`result`, or a marked preview of it when its JSON is larger than `max_bytes`."""
    encoded = json.dumps(result, ensure_ascii=False, default=str)
    size = len(encoded.encode("utf-8"))
    if size <= max_bytes:
        return result
    preview = encoded.encode("utf-8")[: max(0, max_bytes - 256)].decode("utf-8", errors="ignore")
    return {TRUNCATION_MARKER: True, "original_bytes": size, "preview": preview}


def succeed(session: Session, task_id: str, *, result: Any, elapsed_ms: int, params: Any = None) -> None:
    """Mark the row `success` with its result and timing."""
    values: dict[str, Any] = {
        "status": Status.SUCCESS.value,
        "result": result,
        "error_message": None,
        "execution_time_ms": elapsed_ms,
        "finished_at": _now(),
        "lease_expires_at": None,
    }
    if params is not None:
        values["params"] = params
    session.execute(sa.update(McpExecution).where(McpExecution.task_id == task_id).values(**values))


def fail(
    session: Session,
    task_id: str,
    *,
    message: str,
    elapsed_ms: int | None,
    final: bool,
    params: Any = None,
    override_success: bool = False,
) -> None:
    """Mark the row `error` (final) or `retrying` with a one-line message.

    A row that already says `success` is left alone unless `override_success` (a report whose
    data call succeeded but whose template then failed).
    """
    values: dict[str, Any] = {
        "status": (Status.ERROR if final else Status.RETRYING).value,
        "error_message": " ".join(message.split())[:ERROR_MESSAGE_MAX],
        "execution_time_ms": elapsed_ms,
        "finished_at": _now() if final else None,
        "lease_expires_at": None,
    }
    if params is not None:
        values["params"] = params
    if elapsed_ms is None:
        del values["execution_time_ms"]
    query = sa.update(McpExecution).where(McpExecution.task_id == task_id)
    if not override_success:
        query = query.where(McpExecution.status != Status.SUCCESS.value)
    session.execute(query.values(**values))


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


def mark_stuck(session: Session, older_than: datetime, reason: str) -> int:
    """Mark `running` rows whose lease ran out before `older_than` as `error` (their worker died
    and no redelivery came); returns how many."""
    result = session.execute(
        sa.update(McpExecution)
        .where(
            McpExecution.status.in_([Status.RUNNING.value, Status.PENDING.value]),
            sa.func.coalesce(McpExecution.lease_expires_at, McpExecution.started_at) < older_than,
        )
        .values(status=Status.ERROR.value, error_message=reason, finished_at=_now(), lease_expires_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def get(session: Session, task_id: str) -> McpExecution | None:
    return session.scalars(sa.select(McpExecution).where(McpExecution.task_id == task_id)).one_or_none()


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
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }
