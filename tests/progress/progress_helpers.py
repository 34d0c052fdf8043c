"""Helpers of the progress, cancellation and MCP-tasks tests: the fault tests' helpers (in
tests/faults) made importable, and server-everything over streamable HTTP."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

FAULTS = Path(__file__).resolve().parents[1] / "faults"
if str(FAULTS) not in sys.path:
    sys.path.insert(0, str(FAULTS))

from fault_helpers import Proc, Procs  # noqa: E402  (importable once tests/faults is on the path)
from processes import everything_binary, wait_until  # noqa: E402

from worker.processes import port_open  # noqa: E402


def start_everything_http(procs: Procs, port: int, name: str = "everything") -> tuple[str, Proc]:
    """server-everything over streamable HTTP on `port` (it takes it from $PORT): its URL and
    its process."""
    binary = everything_binary()
    node_dir = str(Path(shutil.which("node") or "node").parent)
    proc = procs.spawn(
        f"{name}-{port}",
        [str(binary), "streamableHttp"],
        {"PATH": node_dir, "PORT": str(port)},
    )
    wait_until(lambda: port_open(port) or not proc.alive(), 30, "server-everything to listen")
    assert proc.alive(), proc.log()
    return f"http://127.0.0.1:{port}/mcp", proc
