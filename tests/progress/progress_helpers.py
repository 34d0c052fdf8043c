"""Helpers of the progress, cancellation and MCP-tasks tests: the fault tests' helpers (in
tests/faults) made importable, and server-everything's executable."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

FAULTS = Path(__file__).resolve().parents[1] / "faults"
if str(FAULTS) not in sys.path:
    sys.path.insert(0, str(FAULTS))

ROOT = Path(__file__).resolve().parents[2]
EVERYTHING = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "mcp-server-everything"
INSTALL_HINT = "run scripts/install-test-servers.sh (needs node >= 18 and npm)"


def everything_binary() -> Path:
    """server-everything's executable; fails (never skips) when it is not installed."""
    if shutil.which("node") is None:
        pytest.fail(f"node is not installed; {INSTALL_HINT}")
    if not EVERYTHING.exists():
        pytest.fail(f"{EVERYTHING.relative_to(ROOT)} is missing; {INSTALL_HINT}")
    return EVERYTHING
