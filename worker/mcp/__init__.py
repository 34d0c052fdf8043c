"""The MCP runtime: call tools on a service's MCP server from synchronous code.

    outcome = call_tool(config, "fetch_weekly_report", {"project_id": 1})

Calls run on one event loop per process (`worker.mcp.loop`) through pooled sessions
(`worker.mcp.pool`) opened by one async context manager per transport (`worker.mcp.transports`);
failures arrive as `worker.errors` classes (`worker.mcp.outcome`). Call `shutdown_runtime()` when
the process stops: it closes every session and reaps every stdio child.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import mcp_types as types
from mcp.client.session import ClientSession
from mcp_types import PaginatedRequestParams

from worker.errors import CallCancelled, ToolFailed
from worker.mcp import calls
from worker.mcp.calls import InputNeeded, TaskPoll, TaskStarted, input_responses
from worker.mcp.http_sessions import ServerSession
from worker.mcp.loop import in_loop_thread, loop_is_running, run_sync, stop_loop
from worker.mcp.outcome import Progress, ToolOutcome, one_line, to_outcome
from worker.mcp.pool import current_pool, get_pool
from worker.services.config import ServiceConfig, timeouts_for
from worker.settings import Settings, get_settings

__all__ = [
    "InputNeeded",
    "Progress",
    "ServerSession",
    "TaskPoll",
    "TaskStarted",
    "ToolOutcome",
    "Watch",
    "call_tool",
    "cancel_task",
    "list_tools",
    "poll_task",
    "pool_stats",
    "shutdown_runtime",
    "start_tool",
]

logger = logging.getLogger(__name__)

# A server that pages its tool list forever cannot hang `list_tools`.
LIST_TOOLS_PAGE_CAP = 100
# Closing everything: sessions close concurrently, each bounded by pool.SESSION_CLOSE_TIMEOUT
# plus its abort grace.
SHUTDOWN_TIMEOUT = 15.0
# Reading counters only waits for the loop to get a turn.
STATS_TIMEOUT = 5.0
# Time for calls cancelled by shutdown to unwind (their sessions are already closed).
CALLER_CANCEL_TIMEOUT = 2.0
# A progress message is for a status line: longer ones are cut.
PROGRESS_MESSAGE_MAX = 200


class Watch(Protocol):
    """What a caller does while its call runs (see `worker.execution.call`)."""

    # How often `tick` runs, in seconds.
    interval: float

    def progress(self, update: Progress) -> None:
        """The server sent progress. Runs on the loop thread: must only store it, never block."""

    def tick(self) -> bool:
        """Runs in the caller's thread every `interval` while the call runs; True cancels it."""


def _bound(config: ServiceConfig, settings: Settings) -> float:
    return timeouts_for(config, settings).bound


def call_tool(
    config: ServiceConfig,
    tool: str,
    arguments: dict[str, Any],
    *,
    settings: Settings | None = None,
    watch: Watch | None = None,
) -> ToolOutcome:
    """Call one tool on the service's MCP server, reusing the pooled session when there is one.

    Blocks for at most connect + call timeouts (+ a small margin). A tool that ran and reported
    an error is returned as `ToolOutcome(is_error=True, message=...)`, not raised. A result that
    does not match the tool's outputSchema is returned with `output_valid=False` and the reason.
    With `watch`, the server's progress reaches `watch.progress`, and `watch.tick` may cancel
    the call (the SDK then sends the server `notifications/cancelled`).

    Raises:
        CommandNotAllowed: a stdio command outside MCP_STDIO_ALLOWED_COMMANDS.
        InvalidService: the service cannot be reached as configured (command missing, HTTP 404).
        AuthenticationFailed: the server refused the credentials.
        UnknownTool: the server has no such tool.
        ToolInputRejected: the server rejected the arguments.
        ProtocolError: the server does not speak MCP.
        ServerUnavailable, ServerTimeout, ServerError: transient; worth retrying later.
        CallCancelled: `watch.tick` cancelled the call.
    """
    outcome = start_tool(config, tool, arguments, settings=settings, watch=watch, as_task=False)
    if isinstance(outcome, InputNeeded):
        raise ToolFailed(f"tool {tool!r} asks for input; call it through mcp.execute_tool to answer it")
    assert isinstance(outcome, ToolOutcome)  # only a call started with as_task becomes a task
    return outcome


def start_tool(
    config: ServiceConfig,
    tool: str,
    arguments: dict[str, Any],
    *,
    settings: Settings | None = None,
    watch: Watch | None = None,
    as_task: bool = True,
    answers: dict[str, Any] | None = None,
    request_state: str | None = None,
) -> ToolOutcome | TaskStarted | InputNeeded:
    """`call_tool`, except that a tool the server runs as an MCP task (and `as_task`) is started
    as one: `TaskStarted` comes back at once, and `poll_task` follows it; a server that needs
    input first gives `InputNeeded`, and the call is made again with `answers` (JSON, see
    `input_responses`) and the `request_state` it gave.

    Raises:
        InvalidArguments: `answers` do not parse.
        WorkerError: as for `call_tool`.
    """
    settings = settings or get_settings()
    secrets = config.secrets()
    parsed = input_responses(answers) if answers is not None else None

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if watch is not None:
            text = one_line(message, secrets, PROGRESS_MESSAGE_MAX) if message else None
            watch.progress(Progress(progress, total, text))

    async def op(session: ClientSession, timeout: float) -> ToolOutcome | TaskStarted | InputNeeded:
        if as_task and parsed is None and await calls.runs_as_task(session, tool):
            started = await calls.start_task(session, tool, arguments, timeout)
            if config.mode == "streamable_http":
                return started  # later deliveries poll it, from any process (`poll_task`)
            logger.info("%s runs as the server's task %s, polled on its connection", tool, started.task_id)
            got = await calls.follow_task(session, started, timeout)
            return await _task_outcome(session, tool, got, timeout, secrets)
        progress = on_progress if watch else None
        result = await calls.send_call(session, tool, arguments, timeout, progress, parsed, request_state)
        if isinstance(result, types.InputRequiredResult):
            requests = {
                key: request.model_dump(by_alias=True, mode="json", exclude_none=True)
                for key, request in (result.input_requests or {}).items()
            }
            return InputNeeded(requests, result.request_state)
        valid, why = await calls.check_output(session, tool, result)
        return to_outcome(tool, result, secrets, output_valid=valid, output_error=why)

    async def run() -> ToolOutcome | TaskStarted | InputNeeded:
        return await get_pool().run(config, settings, op)

    if watch is None:
        return run_sync(run(), _bound(config, settings))
    return run_sync(run(), _bound(config, settings), tick=watch.tick, tick_every=watch.interval)


async def _task_outcome(
    session: ClientSession, tool: str, got: types.GetTaskResult, timeout: float, secrets: list[str]
) -> ToolOutcome:
    """The outcome of a task followed to its end on its connection (`calls.follow_task`)."""
    if got.status == "cancelled":
        raise CallCancelled(f"the server cancelled its task {got.task_id}")
    if got.status == "input_required":
        raise ToolFailed(
            f"tool {tool!r} asks for input in its task over a connection-bound transport; "
            "serve it over streamable HTTP to answer it with `mcp-worker executions respond`"
        )
    result = await calls.task_result(session, got.task_id, timeout)
    valid, why = await calls.check_output(session, tool, result)
    return to_outcome(tool, result, secrets, output_valid=valid, output_error=why)


def poll_task(
    config: ServiceConfig,
    tool: str,
    task_id: str,
    *,
    settings: Settings | None = None,
    session: ServerSession | None = None,
) -> TaskPoll:
    """Ask the server how its task `task_id` (a call of `tool`) is doing (`tasks/get`), in the
    server's `session` that started it when there is one; once it is done, fetch the call's
    result (`tasks/result`) as a `ToolOutcome`.

    Raises:
        WorkerError: as for `call_tool` (the server forgot the task: `ProtocolError`).
    """
    settings = settings or get_settings()
    secrets = config.secrets()

    async def op(mcp_session: ClientSession, timeout: float) -> TaskPoll:
        got = await calls.get_task(mcp_session, task_id, timeout)
        message = one_line(got.status_message, secrets, PROGRESS_MESSAGE_MAX) if got.status_message else None
        if got.status not in ("completed", "failed"):
            return TaskPoll(got.status, message, calls.poll_after(got))
        result = await calls.task_result(mcp_session, task_id, timeout)
        valid, why = await calls.check_output(mcp_session, tool, result)
        outcome = to_outcome(tool, result, secrets, output_valid=valid, output_error=why)
        return TaskPoll(got.status, message, 0.0, outcome)

    async def run() -> TaskPoll:
        return await get_pool().run(config, settings, op, resume=session)

    return run_sync(run(), _bound(config, settings))


def cancel_task(
    config: ServiceConfig,
    task_id: str,
    *,
    settings: Settings | None = None,
    session: ServerSession | None = None,
) -> str:
    """Ask the server to cancel its task `task_id` (`tasks/cancel`), in its `session` when there
    is one; returns the task's status.

    Raises:
        WorkerError: as for `call_tool`.
    """
    settings = settings or get_settings()

    async def op(mcp_session: ClientSession, timeout: float) -> str:
        return await calls.cancel_task(mcp_session, task_id, timeout)

    async def run() -> str:
        return await get_pool().run(config, settings, op, resume=session)

    return run_sync(run(), _bound(config, settings))


def list_tools(config: ServiceConfig, *, settings: Settings | None = None) -> list[dict[str, Any]]:
    """The server's tools as `{"name", "description", "input_schema"}` dicts.

    Raises:
        WorkerError: as for `call_tool` (minus the tool-specific classes).
    """
    settings = settings or get_settings()

    async def op(session: ClientSession, timeout: float) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(LIST_TOOLS_PAGE_CAP):
            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor))
            tools += [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in page.tools
            ]
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def run() -> list[dict[str, Any]]:
        return await get_pool().run(config, settings, op)

    return run_sync(run(), _bound(config, settings))


def pool_stats() -> dict[str, int]:
    """Counters of this process's pool: open sessions, stdio children spawned, calls in flight."""
    empty = {"open_sessions": 0, "open_stdio_sessions": 0, "sessions_opened": 0, "stdio_spawned": 0}
    if not loop_is_running() or in_loop_thread():
        return empty | {"in_flight": 0, "retries": 0}

    async def stats() -> dict[str, int]:
        pool = current_pool()
        return pool.stats() if pool is not None else empty | {"in_flight": 0, "retries": 0}

    return run_sync(stats(), STATS_TIMEOUT)


def shutdown_runtime() -> None:
    """Close every session, reap every stdio child, and stop the loop. Idempotent; safe at exit."""
    if not loop_is_running():
        return
    if in_loop_thread():
        logger.warning("shutdown_runtime called from the MCP loop thread; skipped")
        return

    async def close() -> None:
        pool = current_pool()
        if pool is not None:
            await pool.close_all()
        # Calls still running (other threads waiting in run_sync) end now, not at their timeout.
        callers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in callers:
            task.cancel()
        if callers:
            await asyncio.wait(callers, timeout=CALLER_CANCEL_TIMEOUT)

    try:
        run_sync(close(), SHUTDOWN_TIMEOUT)
    except Exception:
        logger.exception("closing MCP sessions failed; stopping the loop anyway")
    finally:
        stop_loop()
