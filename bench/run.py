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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.env import MEMORY_USERS, REPO, BenchEnv

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TRANSPORTS = ("stdio", "streamable_http", "sse")
HTTP_TRANSPORTS = ("stdio", "streamable_http")


@dataclass(frozen=True)
class Sizes:
    ceiling: int
    direct: int
    execute: int
    diagnostic: int
    naive_stdio: int
    naive_http: int
    latency: int
    slow: int  # slow-tool calls through the production worker and the direct client
    slow_prefork: int  # 200 ms calls through prefork -c 8 (2 s calls: a tenth of it)


FULL = Sizes(
    ceiling=2000,
    direct=1000,
    execute=2000,
    diagnostic=1000,
    naive_stdio=12,
    naive_http=200,
    latency=200,
    slow=2000,
    slow_prefork=2000,
)
QUICK = Sizes(
    ceiling=500,
    direct=300,
    execute=500,
    diagnostic=300,
    naive_stdio=4,
    naive_http=50,
    latency=50,
    slow=600,
    slow_prefork=400,
)
# The slow tool's durations, in seconds.
SLOW_SECONDS = (0.2, 2.0)

# The targets: (what, measured from the summary, at least).
TARGETS: list[tuple[str, Callable[[dict[str, Any]], float], float]] = [
    (
        "200 ms tool: production worker / direct asyncio client",
        lambda s: s["slow/200ms/production"] / s["slow/200ms/direct"],
        0.60,
    ),
    (
        "200 ms tool: production worker / prefork -c 8",
        lambda s: s["slow/200ms/production"] / s["slow/200ms/prefork"],
        5.0,
    ),
    (
        "fast tool stdio: production worker / prefork -c 8",
        lambda s: s["execute_tool/stdio"] / s["prefork/execute_tool/stdio"],
        1.0,
    ),
    (
        "fast tool streamable_http: production worker / prefork -c 8",
        lambda s: s["execute_tool/streamable_http"] / s["prefork/execute_tool/streamable_http"],
        1.0,
    ),
]
LATENCY_P50_TARGET_MS = 5.0
RSS_TARGET_MIB = 300.0
# The whole tools worker's RSS while it holds 200 calls: just started (the target's), and at the
# end of the round (the high-water mark it keeps after 400 fast calls in flight and the per-call
# clients of case 4).
RSS_FRESH = "rss/200 in flight"
RSS_AFTER = "rss/200 in flight, after the round"
# The prefork comparison: docker-compose.yml's tools worker before the threads pool (`-c 8`).
PRODUCTION_CONCURRENCY = 8


def _times(ratio: float) -> str:
    """A ratio as the table shows it: one decimal below 10x, so 4.86x does not read as 5x."""
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:,.0f}x"


def _production_concurrency() -> int:
    """The prefork comparison's processes: `$WORKER_TOOLS_CONCURRENCY`, else 8, what
    docker-compose.yml ran before the threads pool."""
    raw = os.environ.get("WORKER_TOOLS_CONCURRENCY", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else PRODUCTION_CONCURRENCY


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N per case (about 3 minutes)")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; the table shows medians (3)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=_production_concurrency(),
        help="processes of the prefork comparison worker ($WORKER_TOOLS_CONCURRENCY or 8)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis database (FLUSHED) instead of a redis-server of its own",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with the logs")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory case")
    parser.add_argument(
        "--only", default="", help="comma-separated case prefixes, e.g. ceiling,execute_tool/stdio (no table)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON file (default: bench/results/<timestamp>.json)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.concurrency < 1:
        parser.error("--runs and --concurrency must be at least 1")
    return args


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _rounds(env: BenchEnv, sizes: Sizes, runs: int, only: tuple[str, ...]) -> dict[str, list[Any]]:
    from bench import cases, slow

    raw: dict[str, list[Any]] = {}

    def record(key: str, fn: Callable[[], Any]) -> None:
        if only and not key.startswith(only):
            return
        started = time.monotonic()
        value = fn()
        raw.setdefault(key, []).append(value)
        if isinstance(value, cases.Drained):
            shown = f"{value.rate:,.1f}/s"
        elif isinstance(value, float):
            shown = f"{value:,.0f} MiB"
        else:
            shown = f"p50 {cases.percentile(value, 50):.1f} ms"
        _say(f"  {key:<30} {shown:>14}   ({time.monotonic() - started:.1f} s)")

    worker = None
    try:
        for run in range(1, runs + 1):
            # A fresh worker each round: a worker keeps one speed for its whole life (its main
            # process's cost per task follows its hash seed, among other things: see the README),
            # so the median of the rounds is a median over workers, not three looks at one.
            _say(f"round {run}/{runs} (load average {os.getloadavg()[0]:.2f})")
            worker = env.start_worker(f"bench-r{run}")
            _production_cases(env, worker, sizes, record)
            env.stop(worker)
            worker = env.start_worker(f"bench-prefork-r{run}", env.concurrency)
            _prefork_cases(env, worker, sizes, record)
            env.stop(worker)
            worker = None
            for seconds in SLOW_SECONDS:
                record(f"slow/{_ms(seconds)}/direct", partial(slow.direct, env, seconds, sizes.slow))
    finally:
        if worker is not None:
            env.stop(worker)
    return raw


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms"


def _production_cases(
    env: BenchEnv, worker: Any, sizes: Sizes, record: Callable[[str, Callable[[], Any]], None]
) -> None:
    from bench import cases, slow

    probe = cases.CpuProbe(env, worker)
    # The memory the issue asks about: a worker that has just started. Measured again after every
    # other case (`RSS_AFTER`): what the worker keeps of its peaks.
    record(RSS_FRESH, partial(slow.rss_in_flight, env, worker))
    record("ceiling", partial(cases.ceiling, env, probe, sizes.ceiling))
    for mode in TRANSPORTS:
        record(f"direct/{mode}", partial(cases.direct, env, mode, sizes.direct))
    for mode in TRANSPORTS:
        record(f"execute_tool/{mode}", partial(cases.execute_tool, env, probe, mode, sizes.execute))
    for mode in HTTP_TRANSPORTS:
        record(f"pooled_call/{mode}", partial(cases.pooled_call, env, probe, mode, sizes.diagnostic))
    record("rows_only", partial(cases.rows_only, env, probe, sizes.diagnostic))
    record("wait_only", partial(cases.wait_only, env, probe, sizes.diagnostic))
    for mode in TRANSPORTS:
        n = sizes.naive_stdio if mode == "stdio" else sizes.naive_http
        record(f"naive/{mode}", partial(cases.naive, env, probe, mode, n))
    for mode in TRANSPORTS:
        record(f"latency/{mode}", partial(cases.latency, env, mode, sizes.latency))
    for seconds in SLOW_SECONDS:
        record(
            f"slow/{_ms(seconds)}/production", partial(slow.through_worker, env, probe, seconds, sizes.slow)
        )
    record(RSS_AFTER, partial(slow.rss_in_flight, env, worker))


def _prefork_cases(
    env: BenchEnv, worker: Any, sizes: Sizes, record: Callable[[str, Callable[[], Any]], None]
) -> None:
    from bench import cases, slow

    probe = cases.CpuProbe(env, worker)
    for mode in HTTP_TRANSPORTS:
        record(f"prefork/execute_tool/{mode}", partial(cases.execute_tool, env, probe, mode, sizes.execute))
    for seconds in SLOW_SECONDS:
        n = sizes.slow_prefork if seconds < 1 else sizes.slow_prefork // 10
        record(f"slow/{_ms(seconds)}/prefork", partial(slow.through_worker, env, probe, seconds, n))


def _summarise(
    raw: dict[str, list[Any]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, float]]]:
    """Medians per key (rates, p50/p99 of latencies), the per-run values, and median CPU per task."""
    from bench import cases

    summary: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    cpu: dict[str, dict[str, float]] = {}
    for key, values in raw.items():
        if key.startswith("rss/"):
            summary[key] = statistics.median(values)
            runs[key] = list(values)
            continue
        if key.startswith("latency/"):
            p50 = [cases.percentile(v, 50) for v in values]
            p99 = [cases.percentile(v, 99) for v in values]
            summary[key] = {"p50_ms": statistics.median(p50), "p99_ms": statistics.median(p99)}
            runs[key] = [
                {"p50_ms": a, "p99_ms": b, "samples": len(v)}
                for a, b, v in zip(p50, p99, values, strict=True)
            ]
            continue
        summary[key] = statistics.median(v.rate for v in values)
        runs[key] = [
            {"n": v.n, "seconds": v.seconds, "rate": v.rate, "cpu_ms_per_task": v.cpu_ms} for v in values
        ]
        if values[0].cpu_ms:
            cpu[key] = {g: statistics.median(v.cpu_ms[g] for v in values) for g in cases.CPU_GROUPS}
    return summary, runs, cpu


def _num(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _table(
    summary: dict[str, Any],
    cpu: dict[str, dict[str, float]],
    sizes: Sizes,
    runs: int,
    memory: Any,
    concurrency: int,
) -> str:
    from bench import cases

    top = summary["ceiling"]

    def rate(key: str, unit: str = "tasks/s") -> str:
        return f"{_num(summary[key])} {unit}"

    lines = [
        f"| case | transport | N x runs | median of {runs} runs | of 1. | x 4. |",
        "|---|---|---:|---:|---:|---:|",
        f"| 1. ceiling: no-op Celery task | - | {sizes.ceiling} x {runs} | {rate('ceiling')} | 100% | |",
    ]
    for mode in TRANSPORTS:
        lines.append(
            f"| 2. direct MCP: one `mcp.Client` session, one process | {mode} | {sizes.direct} x {runs} | "
            f"{rate(f'direct/{mode}', 'calls/s')} | | |"
        )
    for mode in TRANSPORTS:
        value = summary[f"execute_tool/{mode}"]
        lines.append(
            f"| **3. `mcp.execute_tool` end to end (N success rows)** | {mode} | {sizes.execute} x {runs} | "
            f"**{rate(f'execute_tool/{mode}')}** | **{value / top:.1%}** | **{_times(value / summary[f'naive/{mode}'])}** |"
        )
    for mode in HTTP_TRANSPORTS:
        value = summary[f"pooled_call/{mode}"]
        lines.append(
            f"| 3a. diagnostic: only the pooled MCP call (no rows) | {mode} | {sizes.diagnostic} x {runs} | "
            f"{rate(f'pooled_call/{mode}')} | {value / top:.0%} | |"
        )
    lines.append(
        f"| 3b. diagnostic: only the rows (MCP call answered in process) | - | {sizes.diagnostic} x {runs} | "
        f"{rate('rows_only')} | {summary['rows_only'] / top:.0%} | |"
    )
    lines.append(
        f"| 3c. diagnostic: no work, only a {cases.WAIT_MS:g} ms sleep (as long as a pooled call) | - | "
        f"{sizes.diagnostic} x {runs} | {rate('wait_only')} | {summary['wait_only'] / top:.0%} | |"
    )
    for mode in TRANSPORTS:
        n = sizes.naive_stdio if mode == "stdio" else sizes.naive_http
        lines.append(
            f"| 4. naive: a new MCP client per call | {mode} | {n} x {runs} | {rate(f'naive/{mode}')} | "
            f"{summary[f'naive/{mode}'] / top:.1%} | 1x |"
        )
    for mode in TRANSPORTS:
        lat = summary[f"latency/{mode}"]
        lines.append(
            f"| 5. latency, enqueue to success row, idle worker | {mode} | {sizes.latency} x {runs} | "
            f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms | | |"
        )
    lines += _slow_rows(summary, sizes, runs)
    if memory is not None:
        lines.append(
            f"| 6. RSS of one pool process holding {memory.sessions} sessions | streamable_http | "
            f"{memory.sessions} credentials | {memory.rss_all_kib / 1024:.0f} MiB (1 session: "
            f"{memory.rss_one_kib / 1024:.0f} MiB; +{memory.per_session_kib:.0f} KiB per session) | | |"
        )
    lines += [
        "",
        "Worker: `mcp-worker worker -Q mcp.tools -E` (the production tools worker: the threads pool, "
        f"MCP_TOOLS_CONCURRENCY in flight); the prefork rows: `celery -A worker worker -Q mcp.tools -c {concurrency} "
        "-P prefork -E`, as docker-compose.yml ran it before. Both with "
        "celeryconfig as shipped (acks_late, prefetch multiplier 1, task events on) and credentials "
        "encrypted at rest; its own redis-server and PostgreSQL on loopback; the bundled demo MCP server's "
        "`echo`. Throughput: the queue is filled first, then N / (consuming resumed -> last `date_done`). "
        "Cases 2 and 4 use the plain `mcp` 2.x `Client` in its default mode; case 4 writes no row.",
        "",
        "CPU milliseconds per task, median (from /proc; `bench` is this process polling for results):",
        "",
        "| case | " + " | ".join(cases.CPU_GROUPS) + " | total |",
        "|---|" + "---:|" * (len(cases.CPU_GROUPS) + 1),
    ]
    for key, groups in cpu.items():
        lines.append(
            f"| {key} | "
            + " | ".join(f"{groups[g]:.2f}" for g in cases.CPU_GROUPS)
            + f" | {sum(groups.values()):.2f} |"
        )
    if "ceiling" in cpu:
        # What the worker adds to a call: all CPU of an execute_tool task but the MCP server's and
        # the bench's, less a no-op task's.
        def worker_ms(key: str) -> float:
            return sum(v for g, v in cpu[key].items() if g not in ("MCP servers", "bench"))

        added = ", ".join(
            f"{mode} {worker_ms(f'execute_tool/{mode}') - worker_ms('ceiling'):.2f} ms"
            for mode in TRANSPORTS
            if f"execute_tool/{mode}" in cpu
        )
        lines += ["", f"CPU per call the worker adds beyond a no-op task (fast tool): {added}."]
    return "\n".join(lines)


def _slow_rows(summary: dict[str, Any], sizes: Sizes, runs: int) -> list[str]:
    """Rows 7-9: the slow tool through the production worker, prefork -c 8 and the direct client;
    the fast tool on prefork; the whole tools worker's RSS with 200 calls in flight."""
    lines = []
    for mode in HTTP_TRANSPORTS:
        lines.append(
            f"| 7. `mcp.execute_tool`, fast tool, prefork -c 8 | {mode} | {sizes.execute} x {runs} | "
            f"{_num(summary[f'prefork/execute_tool/{mode}'])} tasks/s | | |"
        )
    for seconds in SLOW_SECONDS:
        ms = _ms(seconds)
        for who, n in (
            ("production worker", sizes.slow),
            ("prefork -c 8", sizes.slow_prefork if seconds < 1 else sizes.slow_prefork // 10),
            ("direct asyncio client, as many in flight", sizes.slow),
        ):
            key = f"slow/{ms}/{who.split()[0]}"
            lines.append(
                f"| 8. {ms} tool (`sleep`), {who} | streamable_http | {n} x {runs} | "
                f"{_num(summary[key])} calls/s | | |"
            )
    for key, when in ((RSS_FRESH, "a fresh worker"), (RSS_AFTER, "the same worker after every other case")):
        lines.append(
            f"| 9. RSS of the whole tools worker (supervisor + worker processes), 200 calls in flight, "
            f"{when} | streamable_http | 200 x {runs} | {summary[key]:.0f} MiB | | |"
        )
    return lines


def _checks(summary: dict[str, Any]) -> list[dict[str, Any]]:
    checks = [
        {"target": name, "measured": round(test(summary), 3), "required": need, "met": test(summary) >= need}
        for name, test, need in TARGETS
    ]
    rss = summary[RSS_FRESH]
    checks.append(
        {
            "target": "RSS MiB, 200 in flight (below)",
            "measured": round(rss, 1),
            "required": RSS_TARGET_MIB,
            "met": rss < RSS_TARGET_MIB,
        }
    )
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
    from importlib.metadata import version

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return {
        "cpus": os.cpu_count(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), ""),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--", "worker", "bench", "celeryconfig.py")),
        "packages": {
            p: version(p) for p in ("celery", "kombu", "redis", "mcp", "sqlalchemy", "psycopg2-binary")
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sizes = QUICK if args.quick else FULL
    only = tuple(filter(None, args.only.split(",")))
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    load_before = os.getloadavg()
    _say(
        f"mcp-worker bench: {'quick' if args.quick else 'full'}, {args.runs} runs, worker -c {args.concurrency}"
    )
    with BenchEnv(concurrency=args.concurrency, redis_url=args.redis_url, keep_logs=args.keep_logs) as env:
        _say(f"logs in {env.log_dir}")
        raw = _rounds(env, sizes, args.runs, only)
        memory = None
        if not args.no_memory and not only:
            from bench import cases

            _say(f"memory: {MEMORY_USERS} pooled sessions in one pool process")
            memory = cases.memory(env, MEMORY_USERS)
    summary, runs, cpu = _summarise(raw)
    if only:
        print(json.dumps({"summary": summary, "cpu_ms_per_task": cpu}, indent=2))
        return 0
    table = _table(summary, cpu, sizes, args.runs, memory, args.concurrency)
    checks = _checks(summary)
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()
    print(table)
    print()
    for check in checks:
        verdict = "met    " if check["met"] else "NOT MET"
        print(f"{verdict}  {check['target']}: {check['measured']} (target {check['required']})")
    print(f"\nTotal {elapsed:.0f} s; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.")
    output = args.output or RESULTS_DIR / f"{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "timestamp": stamp,
        "mode": "quick" if args.quick else "full",
        "runs": args.runs,
        "concurrency": args.concurrency,
        "sizes": asdict(sizes),
        "machine": _machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "elapsed_s": elapsed,
        "summary": summary,
        "cpu_ms_per_task": cpu,
        "per_run": runs,
        "memory": None if memory is None else {**asdict(memory), "per_session_kib": memory.per_session_kib},
        "targets": checks,
        "table": table,
    }
    output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"Wrote {output}")
    return 0
