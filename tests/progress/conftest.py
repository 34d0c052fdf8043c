"""Fixtures of the progress, cancellation and MCP-tasks tests: the fault tests' process registry
and private redis-server, and server-everything over streamable HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path

import progress_helpers  # noqa: F401  (puts tests/faults on the path)
import pytest

import fault_helpers  # isort: skip  (importable once progress_helpers ran)
from fault_helpers import Procs  # isort: skip
from processes import everything_binary, free_port, wait_until

from worker.processes import port_open

# The fault tests' fixtures: this test's processes, a private redis-server, the run's engine.
engine = fault_helpers.engine
procs = fault_helpers.procs
redis_server = fault_helpers.redis_server


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
