"""Bench-only tasks, loaded into the bench's worker with `-I bench.tasks` (never by production).

`bench.noop` is the ceiling: the same broker, queue and worker settings as `mcp.execute_tool`
with nothing inside. `bench.naive_call` is what a worker built on the usual per-call client does:
a new `mcp.Client` (a new stdio child, or a new HTTP client and session) for every call, inside
`asyncio.run`. Neither writes an audit row, which flatters them against `mcp.execute_tool`.
"""

from __future__ import annotations

import asyncio

from bench.clients import TOOL, client_for, result_text
from worker.celery import app


@app.task(name="bench.noop", queue="mcp.tools", acks_late=True)
def noop() -> None:
    """Nothing: the cost of the task machinery alone."""


@app.task(name="bench.naive_call", queue="mcp.tools", acks_late=True)
def naive_call(mode: str, target: str, message: str) -> str:
    """Open a client, call `echo` once, close it: one server start-up (stdio) or HTTP client per call."""

    async def once() -> str:
        async with client_for(mode, target) as client:
            result = await client.call_tool(TOOL, {"message": message})
        if result.is_error:
            raise RuntimeError(f"echo failed: {result_text(result)}")
        return result_text(result)

    return asyncio.run(once())
