"""Slow-tool cases: the demo server's `sleep` (it awaits, so the server is never the bottleneck)
through the tools worker in front, through the direct asyncio client with as many calls in
flight, and the memory of the whole tools worker while it holds that many."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench.cases import CpuProbe, Drained, _send, _wait_done, drain
from bench.env import SLOW_SERVICE, USER, BenchEnv
from bench.procs import Proc, children
from worker.names import EXECUTE_TOOL
from worker.processes import rss_bytes, wait_until

# Calls in flight: each of the production worker's processes holds MCP_TOOLS_CONCURRENCY.
IN_FLIGHT = 200


def production_in_flight() -> int:
    """How many calls the production tools worker holds at once: the direct client's count."""
    from worker.cli.supervise import process_count
    from worker.settings import get_settings

    settings = get_settings()
    return process_count(settings) * settings.tools_concurrency


def _calls(seconds: float, n: int) -> list[dict[str, Any]]:
    call = {"user_id": USER, "service": SLOW_SERVICE, "tool": "sleep", "arguments": {"seconds": seconds}}
    return [dict(call) for _ in range(n)]


def through_worker(env: BenchEnv, probe: CpuProbe, seconds: float, n: int) -> Drained:
    """N `mcp.execute_tool` calls of `sleep(seconds)` drained by the worker in front."""
    return drain(env, probe, EXECUTE_TOOL, _calls(seconds, n))[0]


def direct(env: BenchEnv, seconds: float, n: int, in_flight: int | None = None) -> Drained:
    """N `sleep(seconds)` calls over one plain `mcp.Client` session, `in_flight` at a time (as
    many as the production worker holds)."""
    in_flight = in_flight or production_in_flight()

    async def run() -> float:
        # httpx's default pool (100 connections) would cap the calls in flight: one per call.
        limits = httpx2.Limits(max_connections=in_flight + 2, max_keepalive_connections=in_flight + 2)
        async with (
            httpx2.AsyncClient(limits=limits, timeout=httpx2.Timeout(30.0)) as http,
            Client(streamable_http_client(env.http_url, http_client=http)) as client,
        ):
            gate = asyncio.Semaphore(in_flight)

            async def one() -> None:
                async with gate:
                    result = await client.call_tool("sleep", {"seconds": seconds})
                    if result.is_error:
                        raise RuntimeError("sleep failed")

            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.gather(*(one() for _ in range(n)))
            return loop.time() - started

    return Drained(n, asyncio.run(run()))


def rss_in_flight(env: BenchEnv, worker: Proc, seconds: float = 2.0, n: int = IN_FLIGHT) -> float:
    """MiB of RSS of the whole tools worker (the supervisor and every worker process) while the
    server runs `n` of its `sleep(seconds)` calls at once. The stdio MCP servers that earlier
    cases left open under the worker processes are not the worker's own memory, and are left out
    (the README's Memory rows measure them per session)."""
    from worker import mcp
    from worker.services.config import ServiceConfig

    probe = ServiceConfig(
        user_id=USER, desc="probe", mode="streamable_http", url=env.http_url, endpoint=None, api_key=""
    )
    ids = _send(EXECUTE_TOOL, _calls(seconds, n))

    def held() -> bool:
        return int(mcp.call_tool(probe, "concurrency", {}).result["in_flight"]) >= n

    wait_until(held, 60, f"{n} calls in flight on the server", interval=0.05)
    rss = sum(rss_bytes(pid) for pid in [worker.pid, *children(worker.pid)]) / 2**20
    _wait_done(env, ids, timeout=120)
    return rss
