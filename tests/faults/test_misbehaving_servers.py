"""MCP servers that misbehave: each call ends in the right row within the time limits, and the same
worker keeps serving another user's calls during and after it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from fault_helpers import (
    GARBAGE_STDIO,
    STDIO_DEMO,
    Procs,
    RedisServer,
    Worker,
    add_service,
    rows,
    start_demo,
    start_garbage_http,
    start_worker,
    unique,
    wait_final,
    worker_env,
)

from worker.client import submit_tool
from worker.execution.audit import TRUNCATION_MARKER

pytestmark = pytest.mark.faults

# Two tries after the first, three-second call timeouts: a hung server costs ~9 s plus backoff.
# Timeouts that a 10 MB answer and a Python stdio server's start meet with room to spare while the
# suite's other processes share the cores (at 3 s the big stdio answer sometimes took 3 attempts).
MISBEHAVING = {
    "MCP_TASK_SOFT_TIME_LIMIT": 35,
    "MCP_TASK_TIME_LIMIT": 40,
    "MCP_CONNECT_TIMEOUT": 15,
    "MCP_CALL_TIMEOUT": 10,
    "MCP_VISIBILITY_TIMEOUT": 20,
    "MCP_MAX_RETRIES": 2,
    "MCP_MAX_RESULT_BYTES": 1024 * 1024,
}
# Attempts, time limits and backoff together stay well inside this.
ROW_TIMEOUT_S = 90.0
BIG_RESULT_BYTES = 10_000_000


@dataclass
class Serving:
    """A worker on its own broker, with bob's echo service on a healthy demo server."""

    worker: Worker
    engine: sa.Engine
    demo_url: str
    bob: str

    def echo(self, message: str) -> str:
        task_id = unique("bob")
        submit_tool(self.bob, "fine", "echo", {"message": message}, task_id=task_id, app=self.worker.app)
        return task_id


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    from worker.db.engine import get_engine

    workdir = tmp_path_factory.mktemp("misbehaving")
    procs = Procs(workdir / "logs")
    try:
        broker = RedisServer(procs, workdir).start()
        _, demo_url = start_demo(procs)
        worker = start_worker(procs, "misbehaving", worker_env(broker.url(), **MISBEHAVING))
        bob = unique("bob")
        add_service(get_engine(), bob, "fine", "streamable_http", demo_url)
        yield Serving(worker, get_engine(), demo_url, bob)
    finally:
        procs.cleanup()


@dataclass(frozen=True)
class Case:
    mode: str
    server: Callable[[Procs, Serving], str]
    tool: str
    arguments: dict[str, Any]
    status: str
    error: str | None
    attempts: int


def _own_demo(procs: Procs, _: Serving) -> str:
    return start_demo(procs)[1]


CASES = {
    # The server process dies mid-call: unavailable, retried, then a final error.
    "crash-stdio": Case("stdio", lambda p, s: STDIO_DEMO, "crash", {}, "error", "ServerUnavailable", 3),
    "crash-http": Case("streamable_http", _own_demo, "crash", {}, "error", "ServerUnavailable", 3),
    # The server never answers: each try ends at the call timeout.
    "hang": Case(
        "streamable_http", lambda p, s: s.demo_url, "sleep", {"seconds": 60}, "error", "ServerTimeout", 3
    ),
    # Not an MCP server at all: permanent, no retries.
    "garbage-http": Case(
        "streamable_http",
        lambda p, s: start_garbage_http(p),
        "echo",
        {"message": "x"},
        "error",
        "ProtocolError",
        1,
    ),
    "garbage-stdio": Case(
        "stdio", lambda p, s: GARBAGE_STDIO, "echo", {"message": "x"}, "error", "ProtocolError", 1
    ),
    # A 10 MB answer is stored as a marked preview under MCP_MAX_RESULT_BYTES.
    "big-http": Case(
        "streamable_http",
        lambda p, s: s.demo_url,
        "big_result",
        {"size_bytes": BIG_RESULT_BYTES},
        "success",
        None,
        1,
    ),
    "big-stdio": Case(
        "stdio", lambda p, s: STDIO_DEMO, "big_result", {"size_bytes": BIG_RESULT_BYTES}, "success", None, 1
    ),
}
# Cases that last long enough (several call timeouts) to check bob is served *while* they run.
SLOW = {"hang"}


@pytest.mark.parametrize("name", list(CASES))
def test_a_misbehaving_server_ends_in_the_right_row_while_others_are_served(
    name: str, serving: Serving, procs: Procs
) -> None:
    case = CASES[name]
    user = unique(name)
    add_service(serving.engine, user, "bad", case.mode, case.server(procs, serving))

    task_id = unique(name)
    submit_tool(user, "bad", case.tool, case.arguments, task_id=task_id, app=serving.worker.app)
    during = serving.echo("during")
    bob_row = wait_final(serving.engine, [during], ROW_TIMEOUT_S, serving.worker.tail)[during]
    fault_status_then = rows(serving.engine, [task_id]).get(task_id, {}).get("status")
    row = wait_final(serving.engine, [task_id], ROW_TIMEOUT_S, serving.worker.tail)[task_id]
    after = serving.echo("after")
    bob_after = wait_final(serving.engine, [after], ROW_TIMEOUT_S, serving.worker.tail)[after]

    assert row["status"] == case.status, row
    assert row["attempts"] == case.attempts, row
    if case.error:
        assert row["error_message"].startswith(case.error), row["error_message"]
    else:
        result = row["result"]
        assert result[TRUNCATION_MARKER] is True and result["original_bytes"] >= BIG_RESULT_BYTES
        assert len(json.dumps(result)) <= MISBEHAVING["MCP_MAX_RESULT_BYTES"]
    assert bob_row["status"] == "success" and bob_after["status"] == "success"
    if name in SLOW:
        assert fault_status_then not in ("success", "error"), "bob's call was not served during the fault"
