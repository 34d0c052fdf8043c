"""Cancellation on the production tools worker (threads pool): a 30 s call to the demo server's
`sleep`, stopped by `mcp-worker executions cancel TASK_ID` or by Celery's revoke (what Flower
sends). The server-side tool sees the cancellation within `CANCEL_BOUND_S`, the row says
`cancelled`, the task ends REVOKED and is not retried."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from fault_helpers import (
    Procs,
    RedisServer,
    Worker,
    add_service,
    rows,
    start_demo,
    start_tools_worker,
    unique,
    worker_env,
)
from processes import wait_until

from worker import mcp
from worker.client import submit_tool
from worker.services.config import ServiceConfig

# The bound: from the cancellation to the server-side tool seeing it.
CANCEL_BOUND_S = 2.0
# The bound is the feature: `make test` runs these alone, after the parallel part.
pytestmark = pytest.mark.timed
SLEEP_S = 30
# Room for the 30 s call (the test environment's call timeout is 5 s).
ENV = {"MCP_CONNECT_TIMEOUT": 10, "MCP_CALL_TIMEOUT": 40, "MCP_TASK_SOFT_TIME_LIMIT": 90}
START_TIMEOUT_S = 60.0
MCP_WORKER = str(Path(sys.executable).parent / "mcp-worker")


def _server_counts(url: str) -> dict[str, int]:
    config = ServiceConfig(
        user_id="probe",
        desc="probe",
        mode="streamable_http",
        url=url,
        endpoint=None,
        api_key="",
        params={},
        auth={},
    )
    return dict(mcp.call_tool(config, "concurrency", {}).result)


def _running_call(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> tuple[Worker, str, str, dict[str, str]]:
    """A tools worker running a 30 s `sleep` on a demo server: (worker, server url, task id, env)."""
    _, url = start_demo(procs)
    env = worker_env(redis_server.url(), **ENV)
    worker = start_tools_worker(procs, "cancel", env)
    user = unique("cancel")
    add_service(engine, user, "slow", "streamable_http", url)
    task_id = unique("sleep")
    submit_tool(user, "slow", "sleep", {"seconds": SLEEP_S}, task_id=task_id, app=worker.app)
    wait_until(
        lambda: (
            _server_counts(url)["in_flight"] == 1
            and rows(engine, [task_id]).get(task_id, {}).get("status") == "running"
        ),
        START_TIMEOUT_S,
        "the call to be running at the server",
        interval=0.1,
    )
    return worker, url, task_id, env


def _assert_stopped_at_server(url: str, since: float) -> None:
    deadline = since + CANCEL_BOUND_S
    while (counts := _server_counts(url))["cancelled"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts["cancelled"] == 1, (
        f"the server did not see the cancellation within {CANCEL_BOUND_S}s: {counts}"
    )
    assert counts["in_flight"] == 0


def _assert_cancelled_not_retried(worker: Worker, engine: sa.Engine, task_id: str) -> None:
    def ended() -> bool:
        return rows(engine, [task_id])[task_id]["status"] != "running"

    wait_until(ended, 30, "the row to leave `running`", interval=0.1)
    row = rows(engine, [task_id])[task_id]
    assert row["status"] == "cancelled", row
    assert row["attempts"] == 1
    assert "CallCancelled" in row["error_message"]
    result = worker.app.AsyncResult(task_id)
    wait_until(lambda: result.state == "REVOKED", 30, "the task state REVOKED", interval=0.1)
    # A retry would have claimed the row again (attempts 2) or logged one.
    assert f"{task_id}] Retry" not in worker.log() and "Retry in" not in worker.log()


@pytest.mark.parametrize("how", ["cli", "revoke"])
def test_a_running_call_is_cancelled_at_the_server(
    how: str, procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    worker, url, task_id, env = _running_call(procs, redis_server, engine)

    started = time.monotonic()
    if how == "cli":
        done = subprocess.run(
            [MCP_WORKER, "executions", "cancel", task_id], env=env, capture_output=True, text=True, timeout=60
        )
        _assert_stopped_at_server(url, started)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"task_id": task_id, "status": "cancelled", "cancelled": True}
    else:
        # What Flower's "revoke" button sends (terminate cannot stop a thread: the call watches).
        worker.app.control.revoke(task_id, terminate=True)
        _assert_stopped_at_server(url, started)

    _assert_cancelled_not_retried(worker, engine, task_id)
