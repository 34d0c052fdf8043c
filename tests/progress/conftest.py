"""Fixtures of the progress, cancellation and MCP-tasks tests: the fault tests' process registry
and private redis-server, and server-everything over streamable HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from progress_helpers import everything_binary

from fault_helpers import Procs, RedisServer  # isort: skip  (importable once progress_helpers ran)
from processes import free_port, wait_until

from worker.processes import port_open


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
    """A private redis-server for this test's worker and producer."""
    return RedisServer(procs, tmp_path).start()


@pytest.fixture
def engine() -> sa.Engine:
    from worker.db.engine import get_engine

    return get_engine()


@pytest.fixture
def everything_http(procs: Procs) -> str:
    """server-everything over streamable HTTP (it takes its port from $PORT); its URL."""
    binary = everything_binary()
    port = free_port()
    node_dir = str(Path(shutil.which("node") or "node").parent)
    proc = procs.spawn(
        f"everything-{port}", [str(binary), "streamableHttp"], {"PATH": node_dir, "PORT": str(port)}
    )
    wait_until(lambda: port_open(port) or not proc.alive(), 30, "server-everything to listen")
    assert proc.alive(), proc.log()
    return f"http://127.0.0.1:{port}/mcp"
