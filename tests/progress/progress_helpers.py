"""Helpers of the progress, cancellation and MCP-tasks tests: the fault tests' helpers (in
tests/faults) made importable; server-everything's executable is `processes.everything_binary`."""

from __future__ import annotations

import sys
from pathlib import Path

FAULTS = Path(__file__).resolve().parents[1] / "faults"
if str(FAULTS) not in sys.path:
    sys.path.insert(0, str(FAULTS))
