"""The transitions of an execution row whose call is paused or stopped, beside the main lifecycle
of `worker.execution.audit`:

    running --set_progress--> running            (the server's latest progress)
    running --await_task----> running, unheld    (an MCP task between two polls)
    running --need_input----> input_required --respond--> retrying --begin--> running ...
    running|retrying|input_required|unheld --cancel--> cancelled

Like `audit`, each is one conditional UPDATE that says whether it applied.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from worker.db.models import McpExecution
from worker.execution.audit import ERROR_MESSAGE_MAX, PROGRESS_MESSAGE_MAX, Status, _now, _table


def set_progress(
    connection: Connection,
    task_id: str,
    *,
    owner: str,
    progress: float,
    total: float | None,
    message: str | None,
) -> bool:
    """Record the call's latest progress on its row, while `owner` holds it; returns whether it did."""
    statement = (
        sa.update(_table)
        .where(_table.c.task_id == task_id, _table.c.lease_owner == owner)
        .values(
            progress=progress,
            progress_total=total,
            progress_message=message[:PROGRESS_MESSAGE_MAX] if message else None,
        )
    )
    result: Any = connection.execute(statement)
    return bool(result.rowcount)


def await_task(
    connection: Connection,
    task_id: str,
    *,
    owner: str,
    server_task_id: str,
    message: str | None,
    poll_within: float,
    server_session: dict[str, str] | None = None,
) -> bool:
    """The call runs as the server's task `server_task_id`: keep its id (and, when it was just
    started, the `server_session` it lives in), let go of the row (no process holds it between
    polls) and expect the next poll within `poll_within` seconds (or `mark_stuck` ends it). Only
    while `owner` holds the lease; returns whether it did."""
    c = _table.c
    values: dict[str, Any] = {
        "server_task_id": server_task_id,
        "progress_message": message[:PROGRESS_MESSAGE_MAX] if message else None,
        "lease_owner": None,
        "lease_expires_at": _now() + timedelta(seconds=poll_within),
    }
    if server_session is not None:
        values["server_session"] = sa.bindparam("b_session", type_=c.server_session.type)
    statement = (
        sa.update(_table)
        .where(c.task_id == task_id, c.lease_owner == owner, c.status == Status.RUNNING.value)
        .values(**values)
    )
    result: Any = connection.execute(statement, {"b_session": server_session} if server_session else {})
    return bool(result.rowcount)


def server_session_of(session: Session, task_id: str) -> Any:
    """The stored session (JSON) the row's server task lives in; None when it has none."""
    return session.execute(
        sa.select(McpExecution.server_session).where(McpExecution.task_id == task_id)
    ).scalar()


def need_input(connection: Connection, task_id: str, *, owner: str, request: Any) -> bool:
    """The server's task waits for input: the row says `input_required` and keeps the (redacted)
    request; nobody holds it until `mcp-worker executions respond`. Returns whether it did."""
    c = _table.c
    statement = (
        sa.update(_table)
        .where(c.task_id == task_id, c.lease_owner == owner, c.status == Status.RUNNING.value)
        .values(
            status=Status.INPUT_REQUIRED.value,
            input_request=sa.bindparam("b_request", type_=_table.c.input_request.type),
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    result: Any = connection.execute(statement, {"b_request": request})
    return bool(result.rowcount)


def input_of(session: Session, task_id: str) -> Any:
    """The row's stored input request (and the answers `respond` added to it)."""
    return session.execute(
        sa.select(McpExecution.input_request).where(McpExecution.task_id == task_id)
    ).scalar()


def respond(connection: Connection, task_id: str, *, request: Any, retry_within: float) -> bool:
    """Store the answers to an `input_required` row's request (`request`: the stored request with
    its `responses`) and make the row wait, as `retrying`, for the delivery that sends them
    (within `retry_within` seconds, or `mark_stuck` ends it). Returns whether it did."""
    c = _table.c
    statement = (
        sa.update(_table)
        .where(c.task_id == task_id, c.status == Status.INPUT_REQUIRED.value)
        .values(
            status=Status.RETRYING.value,
            input_request=sa.bindparam("b_request", type_=_table.c.input_request.type),
            lease_expires_at=_now() + timedelta(seconds=retry_within),
        )
    )
    result: Any = connection.execute(statement, {"b_request": request})
    return bool(result.rowcount)


def cancel(connection: Connection, task_id: str, *, message: str, owner: str | None = None) -> bool:
    """Mark the row `cancelled` (final): with `owner`, only while that owner holds it (the call
    that was running stops); without, only when no call runs it now (`retrying`,
    `input_required`, a server's task between polls). Returns whether it did."""
    c = _table.c
    query = sa.update(_table).where(c.task_id == task_id)
    if owner is not None:
        query = query.where(c.lease_owner == owner, c.status == Status.RUNNING.value)
    else:
        query = query.where(
            sa.or_(
                c.status.in_([Status.RETRYING.value, Status.INPUT_REQUIRED.value]),
                sa.and_(c.status == Status.RUNNING.value, c.lease_owner.is_(None)),
            )
        )
    result: Any = connection.execute(
        query.values(
            status=Status.CANCELLED.value,
            error_message=" ".join(message.split())[:ERROR_MESSAGE_MAX],
            finished_at=_now(),
            lease_expires_at=None,
        )
    )
    return bool(result.rowcount)
