"""`python -m bench [--quick] [--runs R]`: run every case R times round-robin, print one table,
write `bench/results/<timestamp>.json`.

Round-robin (every case once per round, then the next round) spreads the noise of a shared
machine over all cases alike, and the ratios compare medians measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.env import MEMORY_USERS, REPO, BenchEnv

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TRANSPORTS = ("stdio", "streamable_http", "sse")


@dataclass(frozen=True)
class Sizes:
    ceiling: int
    direct: int
    execute: int
    naive_stdio: int
    naive_http: int
    latency: int


FULL = Sizes(ceiling=2000, direct=1000, execute=2000, naive_stdio=12, naive_http=200, latency=200)
QUICK = Sizes(ceiling=500, direct=300, execute=500, naive_stdio=4, naive_http=50, latency=50)

# The targets the issue sets, as (name, test over the summary, what it compares).
TARGETS: list[tuple[str, Callable[[dict[str, Any]], float], float]] = [
    ("execute_tool stdio / ceiling", lambda s: s["execute_tool/stdio"] / s["ceiling"], 0.50),
    ("execute_tool streamable_http / ceiling", lambda s: s["execute_tool/streamable_http"] / s["ceiling"], 0.40),
    ("execute_tool stdio / naive stdio", lambda s: s["execute_tool/stdio"] / s["naive/stdio"], 100.0),
    (
        "execute_tool streamable_http / naive streamable_http",
        lambda s: s["execute_tool/streamable_http"] / s["naive/streamable_http"],
        5.0,
    ),
]
LATENCY_P50_TARGET_MS = 25.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N per case (about 3 minutes)")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; the table shows medians (3)")
    parser.add_argument(
        "--concurrency", type=int, default=os.cpu_count() or 2, help="worker processes (default: CPUs)"
    )
    parser.add_argument("--redis-url", default=None, help="use this Redis database (FLUSHED) instead of a redis-server of its own")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with the logs")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory case")
    parser.add_argument(
        "--only", default="", help="comma-separated case prefixes, e.g. ceiling,execute_tool/stdio (no table)"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: bench/results/<timestamp>.json)")
    return parser.parse_args(argv)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _rounds(env: BenchEnv, sizes: Sizes, runs: int, only: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    from bench import cases

    raw: dict[str, list[Any]] = {}

    def record(key: str, fn: Callable[[], Any]) -> None:
        if only and not key.startswith(only):
            return
        started = time.monotonic()
        value = fn()
        raw.setdefault(key, []).append(value)
        shown = f"{value.rate:.1f}/s" if isinstance(value, cases.Drained) else f"p50 {cases.percentile(value, 50):.1f} ms"
        _say(f"  {key:<28} {shown:>14}   ({time.monotonic() - started:.1f} s)")

    for run in range(1, runs + 1):
        _say(f"round {run}/{runs} (load average {os.getloadavg()[0]:.2f})")
        record("ceiling", lambda: cases.ceiling(env, sizes.ceiling))
        for mode in TRANSPORTS:
            record(f"direct/{mode}", lambda mode=mode: cases.direct(env, mode, sizes.direct))
        for mode in TRANSPORTS:
            record(f"execute_tool/{mode}", lambda mode=mode: cases.execute_tool(env, mode, sizes.execute))
        for mode in TRANSPORTS:
            n = sizes.naive_stdio if mode == "stdio" else sizes.naive_http
            record(f"naive/{mode}", lambda mode=mode, n=n: cases.naive(env, mode, n))
        for mode in TRANSPORTS:
            record(f"latency/{mode}", lambda mode=mode: cases.latency(env, mode, sizes.latency))
    return raw


def _summarise(raw: dict[str, list[Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Medians per key (rates, and p50/p99 of latencies), and the per-run values for the JSON."""
    from bench import cases

    summary: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    for key, values in raw.items():
        if key.startswith("latency/"):
            p50 = [cases.percentile(v, 50) for v in values]
            p99 = [cases.percentile(v, 99) for v in values]
            summary[key] = {"p50_ms": statistics.median(p50), "p99_ms": statistics.median(p99)}
            runs[key] = [{"p50_ms": a, "p99_ms": b, "samples": len(v)} for a, b, v in zip(p50, p99, values, strict=True)]
        else:
            summary[key] = statistics.median(v.rate for v in values)
            runs[key] = [{"n": v.n, "seconds": v.seconds, "rate": v.rate} for v in values]
    return summary, runs


def _table(summary: dict[str, Any], sizes: Sizes, runs: int, memory: Any, concurrency: int) -> str:
    def rate(key: str) -> str:
        return f"{summary[key]:,.1f}" if summary[key] < 100 else f"{summary[key]:,.0f}"

    lines = [
        f"| case | transport | N x runs | result (median of {runs}) | vs ceiling | vs naive |",
        "|---|---|---:|---:|---:|---:|",
        f"| 1. ceiling: no-op Celery task | - | {sizes.ceiling} x {runs} | {rate('ceiling')} tasks/s | 100% | |",
    ]
    for mode in TRANSPORTS:
        lines.append(
            f"| 2. direct MCP, one session, one process | {mode} | {sizes.direct} x {runs} | "
            f"{rate(f'direct/{mode}')} calls/s | | |"
        )
    for mode in TRANSPORTS:
        e = summary[f"execute_tool/{mode}"]
        lines.append(
            f"| 3. `execute_tool` end to end (N success rows) | {mode} | {sizes.execute} x {runs} | "
            f"{rate(f'execute_tool/{mode}')} tasks/s | {e / summary['ceiling']:.0%} | "
            f"{e / summary[f'naive/{mode}']:,.0f}x |"
        )
    for mode in TRANSPORTS:
        n = sizes.naive_stdio if mode == "stdio" else sizes.naive_http
        lines.append(
            f"| 4. naive: new MCP client per call | {mode} | {n} x {runs} | {rate(f'naive/{mode}')} tasks/s | "
            f"{summary[f'naive/{mode}'] / summary['ceiling']:.1%} | 1x |"
        )
    for mode in TRANSPORTS:
        lat = summary[f"latency/{mode}"]
        lines.append(
            f"| 5. latency enqueue -> success row, idle worker | {mode} | {sizes.latency} x {runs} | "
            f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms | | |"
        )
    if memory is not None:
        lines.append(
            f"| 6. RSS of a pool process holding {memory.sessions} sessions | streamable_http | "
            f"{memory.sessions} credentials | {memory.rss_all_kib / 1024:.0f} MiB "
            f"({memory.rss_one_kib / 1024:.0f} MiB with 1; +{memory.per_session_kib:.0f} KiB/session) | | |"
        )
    lines.append("")
    lines.append(
        f"Worker: prefork `-c {concurrency}`, `-Q mcp.tools`, task events on (`-E`), acks_late, "
        "prefetch multiplier 1, INFO logs; Redis and Postgres 15 on loopback."
    )
    return "\n".join(lines)


def _checks(summary: dict[str, Any]) -> list[dict[str, Any]]:
    checks = [
        {"target": name, "measured": round(test(summary), 3), "required": need, "met": test(summary) >= need}
        for name, test, need in TARGETS
    ]
    for mode in ("stdio", "streamable_http"):
        p50 = summary[f"latency/{mode}"]["p50_ms"]
        checks.append(
            {
                "target": f"latency p50 {mode} (ms, below)",
                "measured": round(p50, 2),
                "required": LATENCY_P50_TARGET_MS,
                "met": p50 < LATENCY_P50_TARGET_MS,
            }
        )
    return checks


def _machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    from importlib.metadata import version

    return {
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
            platform.processor(),
        ),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "worker", "bench", "celeryconfig.py")),
        "packages": {p: version(p) for p in ("celery", "kombu", "redis", "mcp", "sqlalchemy", "psycopg2-binary")},
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    load_before = os.getloadavg()
    _say(f"mcp-worker bench: {'quick' if args.quick else 'full'}, {args.runs} runs, worker -c {args.concurrency}")
    with BenchEnv(concurrency=args.concurrency, redis_url=args.redis_url, keep_logs=args.keep_logs) as env:
        _say(f"logs in {env.log_dir}")
        worker = env.start_worker("bench", args.concurrency)
        env.worker_name = worker.name
        only = tuple(filter(None, args.only.split(",")))
        raw = _rounds(env, sizes, args.runs, only)
        env.stop(worker)
        if only:
            summary, _ = _summarise(raw)
            print(json.dumps(summary, indent=2))
            return 0
        memory = None
        if not args.no_memory:
            from bench import cases

            _say(f"memory: {MEMORY_USERS} pooled sessions in one pool process")
            memory = cases.memory(env, MEMORY_USERS)
    summary, runs = _summarise(raw)
    table = _table(summary, sizes, args.runs, memory, args.concurrency)
    checks = _checks(summary)
    elapsed = time.monotonic() - started
    print(table)
    print()
    for check in checks:
        print(f"{'met    ' if check['met'] else 'NOT MET'}  {check['target']}: {check['measured']} (target {check['required']})")
    print(f"\nTotal time {elapsed:.0f} s; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}.")
    output = args.output or RESULTS_DIR / f"{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "timestamp": stamp,
        "mode": "quick" if args.quick else "full",
        "runs": args.runs,
        "concurrency": args.concurrency,
        "sizes": sizes.__dict__,
        "machine": _machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "elapsed_s": elapsed,
        "summary": summary,
        "per_run": runs,
        "memory": None
        if memory is None
        else {**memory.__dict__, "per_session_kib": memory.per_session_kib},
        "targets": checks,
        "table": table,
    }
    output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"Wrote {output}")
    return 0
