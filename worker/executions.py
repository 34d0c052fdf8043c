"""The `mcp_executions` row of a task: one row per Celery task id, across all its attempts.

A run's lifecycle is a small status enum; every transition is persisted here and nowhere else:

    (none) --begin--> running --succeed--> success
                         |------fail(final=False)--> retrying --begin--> running ...
                         '------fail(final=True)---> error

`begin` is idempotent per task id: a redelivered or re-sent task updates the same row, and a
task whose row already says `success` gets the stored row back so the caller can return it
without calling the server again.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.models import McpExecution

TRUNCATION_MARKER = "__truncated__"
ERROR_MESSAGE_MAX = 2000


class Status(enum.StrEnum):
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCESS = "success"
    ERROR = "error"


@dataclass(frozen=True)
class Begun:
    """What `begin` found: the row id, this attempt's number, and a stored success if any."""

    id: int
    attempts: int
    already_succeeded: bool
    result: Any = None
    execution_time_ms: int | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _insert_ignore(session: Session, values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(McpExecution).values(**values).on_conflict_do_nothing(index_elements=["task_id"])
    session.execute(stmt)


def begin(session: Session, *, task_id: str, user_id: str, service: str, tool: str, params: Any) -> Begun:
    """Create or reopen the row for `task_id` and count this attempt.

    Two statements in the caller's transaction: an insert that does nothing if the row exists,
    then a conditional update that claims it unless it already succeeded.
    """
    now = _now()
    _insert_ignore(
        session,
        {
            "task_id": task_id,
            "user_id": user_id,
            "tool_desc": service,
            "tool_name": tool,
            "params": params,
            "status": Status.RUNNING.value,
            "attempts": 0,
            "started_at": now,
        },
    )
    claimed = session.execute(
        sa.update(McpExecution)
        .where(McpExecution.task_id == task_id, McpExecution.status != Status.SUCCESS.value)
        .values(
            status=Status.RUNNING.value,
            attempts=McpExecution.attempts + 1,
            started_at=sa.func.coalesce(McpExecution.started_at, now),
            finished_at=None,
        )
        .returning(McpExecution.id, McpExecution.attempts)
    ).one_or_none()
    if claimed is not None:
        return Begun(id=claimed.id, attempts=claimed.attempts, already_succeeded=False)
    row = session.execute(
        sa.select(
            McpExecution.id, McpExecution.attempts, McpExecution.result, McpExecution.execution_time_ms
        ).where(McpExecution.task_id == task_id)
    ).one()
    return Begun(
        id=row.id,
        attempts=row.attempts,
        already_succeeded=True,
        result=row.result,
        execution_time_ms=row.execution_time_ms,
    )


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
    }
    if params is not None:
        values["params"] = params
    if elapsed_ms is None:
        del values["execution_time_ms"]
    query = sa.update(McpExecution).where(McpExecution.task_id == task_id)
    if not override_success:
        query = query.where(McpExecution.status != Status.SUCCESS.value)
    session.execute(query.values(**values))


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
