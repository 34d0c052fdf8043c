"""Bench-only tasks, loaded into the bench's worker with `-I bench.tasks` (never by production).

`bench.noop` is the ceiling: the same broker, queue and worker settings as `mcp.execute_tool`
with nothing inside. `bench.naive_call` is what a worker built on the usual per-call client does:
a new `mcp.Client` (a new stdio child, or a new HTTP client and session) for every call, inside
`asyncio.run`; it writes no audit row, which flatters it against `mcp.execute_tool`.

Two diagnostics split `mcp.execute_tool` into its halves, to show what bounds it:
`bench.pooled_call` is only the MCP call through the worker's session pool (the service resolved
once per process, no row), and `bench.rows_only` is `mcp.execute_tool`'s own code with the MCP
call replaced by an answer made in process (the claim, the service lookup and the success row).
A third, `bench.wait`, does no work at all but sleeps as long as a pooled call takes: what one
message per pool process at a time allows any task that waits on I/O that long.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task

from bench.clients import TOOL, client_for, result_text
from worker import mcp, names
from worker.celery import app
from worker.errors import ExecutionHeld
from worker.execution.call import run_tool_call
from worker.mcp import ToolOutcome
from worker.services.config import ServiceConfig
from worker.services.registry import resolve
from worker.tasks import _defer

_configs: dict[tuple[str, str], ServiceConfig] = {}
_local = threading.local()
_real_call_tool = mcp.call_tool


def _call_tool(config: ServiceConfig, tool: str, arguments: dict[str, Any], **kwargs: Any) -> ToolOutcome:
    if getattr(_local, "answer", False):
        return ToolOutcome(result=[str(arguments.get("message"))], is_error=False, message=None)
    return _real_call_tool(config, tool, arguments, **kwargs)


# Installed once, when the bench's worker imports this module (`-I bench.tasks`): patching and
# restoring around each task would race between threads and could leave it installed for good.
mcp.call_tool = _call_tool


@app.task(name="bench.noop", queue=names.TOOLS_QUEUE, acks_late=True)
def noop() -> None:
    """Nothing: the cost of the task machinery alone."""


@app.task(name="bench.wait", queue=names.TOOLS_QUEUE, acks_late=True)
def wait(ms: float) -> None:
    """Sleep `ms` milliseconds: no CPU, only the time an I/O-bound call keeps a pool process."""
    time.sleep(ms / 1000)


@app.task(name="bench.naive_call", queue=names.TOOLS_QUEUE, acks_late=True)
def naive_call(mode: str, target: str, message: str) -> str:
    """Open a client, call `echo` once, close it: one server start-up (stdio) or HTTP client per call."""

    async def once() -> str:
        async with client_for(mode, target) as client:
            result = await client.call_tool(TOOL, {"message": message})
        if result.is_error:
            raise RuntimeError(f"echo failed: {result_text(result)}")
        return result_text(result)

    return asyncio.run(once())


@app.task(name="bench.pooled_call", queue=names.TOOLS_QUEUE, acks_late=True)
def pooled_call(user_id: str, service: str, message: str) -> Any:
    """`echo` through the worker's pooled session, without any database work."""
    key = (user_id, service)
    config = _configs.get(key) or _configs.setdefault(key, resolve(user_id, service))
    outcome = mcp.call_tool(config, TOOL, {"message": message})
    if outcome.is_error:
        raise RuntimeError(f"echo failed: {outcome.message}")
    return outcome.result


@contextmanager
def _answered_in_process() -> Iterator[None]:
    """For this thread only (the threads pool runs many tasks in one process): its calls are
    answered in process; the other threads keep calling their servers."""
    _local.answer = True
    try:
        yield
    finally:
        _local.answer = False


@app.task(name="bench.rows_only", bind=True, queue=names.TOOLS_QUEUE, acks_late=True)
def rows_only(self: Task, user_id: str, service: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """`mcp.execute_tool`'s code path with the MCP call answered in process."""
    with _answered_in_process():
        try:
            outcome = run_tool_call(
                task_id=self.request.id,
                user_id=user_id,
                service=service,
                tool=tool,
                arguments=arguments,
                final_attempt=True,
            )
        except ExecutionHeld as held:  # no slot free: re-queued, as `mcp.execute_tool` does
            _defer(self, held)
    return outcome.summary()
