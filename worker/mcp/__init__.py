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
from typing import Any

from mcp import Client
from mcp_types import PaginatedRequestParams

from worker.mcp.loop import in_loop_thread, loop_is_running, run_sync, stop_loop
from worker.mcp.outcome import ToolOutcome, to_outcome
from worker.mcp.pool import current_pool, get_pool
from worker.services.config import ServiceConfig, timeouts_for
from worker.settings import Settings, get_settings

__all__ = ["ToolOutcome", "call_tool", "list_tools", "pool_stats", "shutdown_runtime"]

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


def _bound(config: ServiceConfig, settings: Settings) -> float:
    return timeouts_for(config, settings).bound


def call_tool(
    config: ServiceConfig, tool: str, arguments: dict[str, Any], *, settings: Settings | None = None
) -> ToolOutcome:
    """Call one tool on the service's MCP server, reusing the pooled session when there is one.

    Blocks for at most connect + call timeouts (+ a small margin). A tool that ran and reported
    an error is returned as `ToolOutcome(is_error=True, message=...)`, not raised.

    Raises:
        CommandNotAllowed: a stdio command outside MCP_STDIO_ALLOWED_COMMANDS.
        InvalidService: the service cannot be reached as configured (command missing, HTTP 404).
        AuthenticationFailed: the server refused the credentials.
        UnknownTool: the server has no such tool.
        ToolInputRejected: the server rejected the arguments.
        ProtocolError: the server does not speak MCP.
        ServerUnavailable, ServerTimeout, ServerError: transient; worth retrying later.
    """
    settings = settings or get_settings()
    secrets = config.secrets()

    async def op(client: Client, timeout: float) -> ToolOutcome:
        result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        return to_outcome(tool, result, secrets)

    async def run() -> ToolOutcome:
        return await get_pool().run(config, settings, op)

    return run_sync(run(), _bound(config, settings))


def list_tools(config: ServiceConfig, *, settings: Settings | None = None) -> list[dict[str, Any]]:
    """The server's tools as `{"name", "description", "input_schema"}` dicts.

    Raises:
        WorkerError: as for `call_tool` (minus the tool-specific classes).
    """
    settings = settings or get_settings()

    async def op(client: Client, timeout: float) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(LIST_TOOLS_PAGE_CAP):
            page = await client.session.list_tools(params=PaginatedRequestParams(cursor=cursor))
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
