"""The measured cases. Each returns one result for one run; `bench.run` repeats and takes medians.

Throughput cases drain a pre-filled queue: the worker stops consuming `mcp.tools`, the bench
enqueues N tasks, the worker resumes, and the rate is N over the time from resuming to the last
task's `date_done` in the result backend (stamped by the worker). The producer therefore does not
compete with the worker for the two cores while the clock runs, and the figure is the worker's.
Each drain also reads the CPU time every process involved spent in it, from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO, cast

import redis
import sqlalchemy as sa

from bench.clients import client_for
from bench.env import QUEUE, USER, BenchEnv
from bench.procs import Proc, children, cpu_seconds, postgres_backends, rss_kib, socket_count
from worker.names import EXECUTE_TOOL
from worker.processes import wait_until

DRAIN_TIMEOUT_S = 600.0
CONTROL_TIMEOUT_S = 5.0
# About what one pooled `echo` call keeps a pool process waiting (its `execution_time_ms`).
WAIT_MS = 2.0
RESULT_KEY = "celery-task-meta-{}"
# Process groups of the CPU breakdown, in table order.
CPU_GROUPS = ("worker main", "pool processes", "MCP servers", "Postgres", "Redis", "bench")


@dataclass(frozen=True)
class Drained:
    """One throughput run: N tasks in `seconds`, and the CPU milliseconds per task by process group."""

    n: int
    seconds: float
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.seconds


class CpuProbe:
    """CPU seconds so far of every process a drain involves, grouped as in `CPU_GROUPS`."""

    def __init__(self, env: BenchEnv, worker: Proc) -> None:
        self.env = env
        self.worker = worker

    def snapshot(self) -> dict[str, float]:
        totals = dict.fromkeys(CPU_GROUPS, 0.0)
        totals["worker main"] = cpu_seconds(self.worker.pid)[0]
        for pool_pid in children(self.worker.pid):
            own, reaped = cpu_seconds(pool_pid)
            totals["pool processes"] += own
            # stdio servers: live ones, and the ones already reaped (naive calls start one each).
            totals["MCP servers"] += reaped + sum(cpu_seconds(p)[0] for p in children(pool_pid))
        totals["MCP servers"] += sum(cpu_seconds(p.pid)[0] for p in self.env.demo_servers)
        totals["Postgres"] = sum(cpu_seconds(p)[0] for p in postgres_backends(self.env.db_name))
        if self.env.redis_proc is not None:
            totals["Redis"] = cpu_seconds(self.env.redis_proc.pid)[0]
        totals["bench"] = cpu_seconds(os.getpid())[0]
        return totals


def _app() -> Any:
    from worker.celery import app

    return app


def _redis(env: BenchEnv) -> redis.Redis:
    return redis.Redis.from_url(env.redis_url)


def _control(env: BenchEnv, action: str) -> None:
    control = _app().control
    fn = control.cancel_consumer if action == "cancel" else control.add_consumer
    replies = fn(QUEUE, destination=env.worker_names, reply=True, timeout=CONTROL_TIMEOUT_S)
    if len(replies or []) < len(env.worker_names):
        raise RuntimeError(f"workers {env.worker_names} did not all answer {action}_consumer")


def _send(name: str, kwargs_list: list[dict[str, Any]]) -> list[str]:
    app = _app()
    ids = []
    with app.producer_or_acquire() as producer:
        for kwargs in kwargs_list:
            # Only the id is kept: the AsyncResult's finaliser drops its result subscription.
            ids.append(app.send_task(name, kwargs=kwargs, queue=QUEUE, producer=producer).id)
    return ids


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _results(client: redis.Redis, ids: list[str]) -> list[bytes | None]:
    found: list[bytes | None] = []
    for chunk in _chunks(ids):
        found += cast(list[bytes | None], client.mget([RESULT_KEY.format(i) for i in chunk]))
    return found


def _wait_done(env: BenchEnv, ids: list[str], timeout: float = DRAIN_TIMEOUT_S) -> list[dict[str, Any]]:
    """Wait until every task has a SUCCESS result; return the result metas."""
    client = _redis(env)
    deadline = time.monotonic() + timeout
    # Cheap until the queue is empty, then watch the last tasks, then check them all.
    while client.llen(QUEUE) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the queue still holds {client.llen(QUEUE)} tasks")
        time.sleep(0.1)
    tail = ids[-10:]
    wait_until(lambda: all(_results(client, tail)), timeout, "the last tasks to finish", interval=0.02)

    def all_succeeded() -> list[bytes] | None:
        found = _results(client, ids)
        for r in found:
            if r is not None and b'"FAILURE"' in r:
                raise RuntimeError(f"a bench task failed: {r[:500]!r}")
        if all(r is not None and b'"SUCCESS"' in r for r in found):
            return [r for r in found if r is not None]
        return None

    raw = wait_until(all_succeeded, timeout, f"{len(ids)} tasks to succeed", interval=0.05)
    client.close()
    return [json.loads(r) for r in raw]


def drain(
    env: BenchEnv, probe: CpuProbe, name: str, kwargs_list: list[dict[str, Any]]
) -> tuple[Drained, list[str]]:
    """Enqueue every task while the worker is not consuming, then time the worker draining them."""
    _control(env, "cancel")
    ids = _send(name, kwargs_list)
    before = probe.snapshot()
    started = time.time()
    _control(env, "add")
    metas = _wait_done(env, ids)
    after = probe.snapshot()
    finished = max(datetime.fromisoformat(m["date_done"]).timestamp() for m in metas)
    cpu = {k: 1000 * (after[k] - before[k]) / len(ids) for k in CPU_GROUPS}
    return Drained(len(ids), finished - started, cpu), ids


def warm(env: BenchEnv, name: str, kwargs_list: list[dict[str, Any]]) -> None:
    """Run tasks unmeasured (opens each pool process's sessions, loads lazy imports)."""
    _wait_done(env, _send(name, kwargs_list), timeout=120)


# ---------------------------------------------------------------------- case 1: the ceiling


def ceiling(env: BenchEnv, probe: CpuProbe, n: int) -> Drained:
    warm(env, "bench.noop", [{}] * (4 * env.concurrency))
    return drain(env, probe, "bench.noop", [{}] * n)[0]


# ---------------------------------------------------------------------- case 2: direct MCP


def direct(env: BenchEnv, mode: str, n: int, warmup: int = 5) -> Drained:
    """`echo` in a loop over one persistent plain `mcp.Client` session in this process."""

    async def loop() -> float:
        # The server's stderr (a start-up line) would land in the middle of the progress lines.
        with open(os.devnull, "w") as errlog:
            return await timed(errlog)

    async def timed(errlog: TextIO) -> float:
        async with client_for(mode, env.target(mode), errlog) as client:
            for i in range(warmup):
                await client.call_tool("echo", {"message": f"warm {i}"})
            started = time.perf_counter()
            for i in range(n):
                result = await client.call_tool("echo", {"message": f"bench {i}"})
                if result.is_error:
                    raise RuntimeError("echo failed")
            return time.perf_counter() - started

    return Drained(n, asyncio.run(loop()))


# ---------------------------------------------------------------------- case 3: execute_tool


def _tool_kwargs(mode: str, n: int, user: str = USER) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    return [
        {"user_id": user, "service": mode, "tool": "echo", "arguments": {"message": f"bench {tag} {i}"}}
        for i in range(n)
    ]


def _count_success(ids: list[str]) -> int:
    from worker.db.engine import session_scope
    from worker.db.models import McpExecution

    total = 0
    with session_scope() as session:
        for chunk in _chunks(ids):
            total += (
                session.scalar(
                    sa.select(sa.func.count()).where(
                        McpExecution.task_id.in_(chunk), McpExecution.status == "success"
                    )
                )
                or 0
            )
    return total


def execute_tool(env: BenchEnv, probe: CpuProbe, mode: str, n: int, task: str = EXECUTE_TOOL) -> Drained:
    """Enqueue N `mcp.execute_tool` calls of `echo`; done when N rows say success."""
    warm(env, task, _tool_kwargs(mode, 4 * env.concurrency))
    drained, ids = drain(env, probe, task, _tool_kwargs(mode, n))
    rows = _count_success(ids)
    if rows != n:
        raise RuntimeError(f"{n} tasks succeeded but {rows} rows say success")
    return drained


# ---------------------------------------------------------------------- case 3 diagnostics


def pooled_call(env: BenchEnv, probe: CpuProbe, mode: str, n: int) -> Drained:
    """Only the MCP call through the worker's pool: no rows, the service resolved once per process."""

    def kwargs(count: int) -> list[dict[str, Any]]:
        return [{"user_id": USER, "service": mode, "message": f"pooled {i}"} for i in range(count)]

    warm(env, "bench.pooled_call", kwargs(4 * env.concurrency))
    return drain(env, probe, "bench.pooled_call", kwargs(n))[0]


def rows_only(env: BenchEnv, probe: CpuProbe, n: int) -> Drained:
    """`mcp.execute_tool`'s code with the MCP call answered in process: the rows and the lookup."""
    return execute_tool(env, probe, "stdio", n, task="bench.rows_only")


def wait_only(env: BenchEnv, probe: CpuProbe, n: int) -> Drained:
    """A task that only sleeps WAIT_MS: the rate any task reaches that holds a pool process that long."""
    kwargs = [{"ms": WAIT_MS} for _ in range(n)]
    warm(env, "bench.wait", kwargs[: 4 * env.concurrency])
    return drain(env, probe, "bench.wait", kwargs)[0]


# ---------------------------------------------------------------------- case 4: a client per call


def naive(env: BenchEnv, probe: CpuProbe, mode: str, n: int) -> Drained:
    def kwargs(count: int) -> list[dict[str, Any]]:
        return [{"mode": mode, "target": env.target(mode), "message": f"naive {i}"} for i in range(count)]

    warm(env, "bench.naive_call", kwargs(env.concurrency))
    return drain(env, probe, "bench.naive_call", kwargs(n))[0]


# ---------------------------------------------------------------------- case 5: latency


def latency(env: BenchEnv, mode: str, n: int, warmup: int = 5) -> list[float]:
    """Enqueue -> the row's `finished_at`, one call at a time on an idle worker (milliseconds)."""
    from worker.db.engine import session_scope
    from worker.db.models import McpExecution

    app = _app()
    samples = []
    for i, kwargs in enumerate(_tool_kwargs(mode, warmup + n)):
        sent = time.time()
        result = app.send_task(EXECUTE_TOOL, kwargs=kwargs, queue=QUEUE)
        # The Redis result backend wakes get() by pub/sub: no polling load on the cores.
        summary = result.get(timeout=60)
        if summary["status"] != "success":
            raise RuntimeError(f"latency call failed: {summary}")
        with session_scope() as session:
            finished = session.scalar(
                sa.select(McpExecution.finished_at).where(McpExecution.task_id == result.id)
            )
        if finished is None:
            raise RuntimeError(f"the row of {result.id} has no finished_at")
        if i >= warmup:
            samples.append((finished.timestamp() - sent) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


# ---------------------------------------------------------------------- case 6: memory


@dataclass(frozen=True)
class Memory:
    rss_one_kib: int
    rss_all_kib: int
    sessions: int
    sockets: int

    @property
    def per_session_kib(self) -> float:
        return (self.rss_all_kib - self.rss_one_kib) / (self.sessions - 1)


def memory(env: BenchEnv, users: int) -> Memory:
    """RSS of the only pool process of a `-c 1` worker holding one, then `users`, pooled sessions
    (one per credential) against the one HTTP demo server."""
    worker = env.start_worker("bench-memory", 1)  # prefork -c 1: one pool process to read
    try:
        child = wait_until(lambda: children(worker.pid), 30, "the pool process")[0]

        def call(user_ids: list[str]) -> None:
            kwargs = [
                {"user_id": u, "service": "memory", "tool": "echo", "arguments": {"message": "m"}}
                for u in user_ids
            ]
            _wait_done(env, _send(EXECUTE_TOOL, kwargs), timeout=300)

        names = [f"mem-{i:03d}" for i in range(users)]
        call(names[:1])
        one = rss_kib(child)
        call(names[1:])
        return Memory(
            rss_one_kib=one, rss_all_kib=rss_kib(child), sessions=users, sockets=socket_count(child)
        )
    finally:
        env.stop(worker)
