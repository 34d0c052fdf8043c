"""A call that does not end in one delivery: the server took it as an MCP task (each later
delivery polls it), or it needs input first (the row waits, `input_required`, for
`mcp-worker executions respond`)."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from worker import mcp
from worker.db.engine import autocommit, session_scope
from worker.errors import CallCancelled, SessionGone, TaskPending, ToolFailed, ToolInputRejected
from worker.execution import pauses
from worker.redaction import redact_params
from worker.services.config import ServiceConfig
from worker.settings import Settings

logger = logging.getLogger(__name__)

# How late the next poll of a server's task may come before the row counts as stuck: the time a
# deferred message can take to come back, as for a retry (`call.RETRY_BACKOFF_MAX_S`).
POLL_GRACE_S = 120.0


def answers(task_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """The answers `mcp-worker executions respond` stored for the row's input request."""
    with session_scope() as session:
        stored = pauses.input_of(session, task_id)
    if not isinstance(stored, dict) or not isinstance(stored.get("responses"), dict):
        return None, None
    return stored["responses"], stored.get("request_state")


def server_session(task_id: str) -> mcp.ServerSession | None:
    """The streamable HTTP session the row's server task was started in, when it has one."""
    with session_scope() as session:
        return mcp.ServerSession.from_json(pauses.server_session_of(session, task_id))


def settled(
    started: mcp.ToolOutcome | mcp.TaskStarted | mcp.InputNeeded,
    task_id: str,
    owner: str,
    row_id: int,
    config: ServiceConfig,
) -> mcp.ToolOutcome | None:
    """The call's outcome; None when the server needs input first (the row says
    `input_required` and keeps the request, redacted); or, when the server took it as a task,
    its id recorded on the row and this delivery ended (`TaskPending`: the task is sent again
    to poll it)."""
    if isinstance(started, mcp.ToolOutcome):
        return started
    if isinstance(started, mcp.InputNeeded):
        request = {
            "requests": redact_params(started.requests, config.secrets()),
            "request_state": started.request_state,
        }
        autocommit(lambda connection: pauses.need_input(connection, task_id, owner=owner, request=request))
        logger.info("execution %s waits for input (%s)", row_id, ", ".join(started.requests) or "no requests")
        return None
    logger.info("execution %s runs as the server's task %s (%s)", row_id, started.task_id, started.status)
    where = started.session.to_json() if started.session is not None else None
    _await(task_id, owner, started.task_id, None, started.poll_after, where)


def _await(
    task_id: str,
    owner: str,
    server_task_id: str,
    message: str | None,
    poll_after: float,
    server_session: dict[str, str] | None = None,
) -> NoReturn:
    recorded = autocommit(
        lambda connection: pauses.await_task(
            connection,
            task_id,
            owner=owner,
            server_task_id=server_task_id,
            message=message,
            poll_within=poll_after + POLL_GRACE_S,
            server_session=server_session,
        )
    )
    if not recorded:
        logger.warning("the row of task %s was taken over by another delivery; its outcome stands", task_id)
    raise TaskPending(f"the server's task {server_task_id} is still running", retry_after=poll_after)


def poll(
    config: ServiceConfig, tool: str, server_task_id: str, task_id: str, owner: str, settings: Settings
) -> mcp.ToolOutcome | None:
    """Poll the server's task: its outcome once done; None when it waits for input (the row
    says `input_required`); else the next poll is scheduled (`TaskPending`).

    Raises:
        TaskPending: the task is still working.
        CallCancelled: the server cancelled the task.
        ToolFailed: the server forgot the task (or the session it lived in).
    """
    session = server_session(task_id)
    try:
        polled = mcp.poll_task(config, tool, server_task_id, settings=settings, session=session)
    except (SessionGone, ToolInputRejected) as exc:
        # tasks/get takes only the task id, so a rejection means an unknown task: either way the
        # task is gone, and starting it again is not ours to do.
        where = " and its session" if session is not None else ""
        raise ToolFailed(
            f"the server no longer knows its task {server_task_id}{where} (did it restart or expire "
            f"it?); the call was not started again: {exc}"
        ) from None
    if polled.outcome is not None:
        return polled.outcome
    if polled.status == "cancelled":
        raise CallCancelled(f"the server cancelled its task {server_task_id}")
    if polled.status == "input_required":
        request = redact_params({"task_id": server_task_id, "message": polled.message}, config.secrets())
        autocommit(lambda connection: pauses.need_input(connection, task_id, owner=owner, request=request))
        logger.info("the server's task %s waits for input; the row says input_required", server_task_id)
        return None
    _await(task_id, owner, server_task_id, polled.message, polled.poll_after)
