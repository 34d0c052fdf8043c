"""Fixtures of the fault tests: a registry of the processes each test starts (all killed at the
end, pass or fail), a private redis-server, and the run's database engine.

The tests live in `fault_helpers.py`'s world: real workers, real brokers, real MCP servers."""

from __future__ import annotations

from fault_helpers import engine, procs, redis_server

__all__ = ["engine", "procs", "redis_server"]
