"""Fixtures of the fault tests: a registry of the processes each test starts (all killed at the
end, pass or fail), a private redis-server, and the run's database engine.

The tests live in `fault_helpers.py`'s world: real workers, real brokers, real MCP servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fault_helpers import Procs, RedisServer


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Processes of this test; every one is SIGKILLed by process group when the test ends."""
    started = Procs(tmp_path / "logs")
    try:
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def redis_server(procs: Procs, tmp_path: Path) -> RedisServer:
    """A private redis-server (no persistence) for this test's worker and producer."""
    return RedisServer(procs, tmp_path).start()


@pytest.fixture
def engine() -> sa.Engine:
    """The run's throwaway database (TEST_DB_URL), where the workers write their rows."""
    from worker.db.engine import get_engine

    return get_engine()
