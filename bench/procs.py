"""Process inspection for the bench, on `worker.processes` (one implementation of spawning,
stopping and looking inside processes for the demo, the tests and the bench)."""

from __future__ import annotations

from worker.processes import Child, children, cmdline, cpu_seconds, matching, rss_bytes, socket_count, spawn

Proc = Child

__all__ = [
    "Proc",
    "children",
    "cmdline",
    "cpu_seconds",
    "postgres_backends",
    "rss_kib",
    "socket_count",
    "spawn",
]


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` in KiB."""
    return rss_bytes(pid) // 1024


def postgres_backends(database: str) -> list[int]:
    """Server processes serving connections to `database` on this host (by process title)."""
    return matching(
        lambda p: (title := " ".join(p.cmdline())).startswith("postgres: ") and f" {database} " in title
    )
