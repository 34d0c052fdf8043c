"""Fixtures of the progress, cancellation and MCP-tasks tests: the fault tests' process registry
and private redis-server, and server-everything over streamable HTTP."""

from __future__ import annotations

import progress_helpers
import pytest

import fault_helpers  # isort: skip  (importable once progress_helpers ran)
from fault_helpers import Procs  # isort: skip
from processes import free_port

# The fault tests' fixtures: this test's processes, a private redis-server, the run's engine.
engine = fault_helpers.engine
procs = fault_helpers.procs
redis_server = fault_helpers.redis_server


@pytest.fixture
def everything_http(procs: Procs) -> str:
    """server-everything over streamable HTTP; its URL."""
    return progress_helpers.start_everything_http(procs, free_port())[0]
