"""Progress: server-everything's `trigger-long-running-operation` (5 steps) on the production
tools worker (threads pool), over stdio and streamable HTTP. The Celery task state says PROGRESS
in the result backend while the call runs, and the row's final progress is 5/5. And
`mcp-worker call --wait` prints the progress while it waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fault_helpers import (
    Procs,
    RedisServer,
    add_service,
    rows,
    start_demo,
    start_tools_worker,
    unique,
    wait_final,
    worker_env,
)
from processes import everything_binary, wait_until

from worker.client import submit_tool
from worker.settings import reset_settings

# Generous bounds for a shared 2-core machine; nothing asserts on time.
SEEN_TIMEOUT_S = 60.0
FINAL_TIMEOUT_S = 90.0
STEPS = 5
# Room for the 5 s operation whatever the suite's own timeouts are.
TIMEOUTS = {"MCP_CONNECT_TIMEOUT": 10, "MCP_CALL_TIMEOUT": 20, "MCP_TASK_SOFT_TIME_LIMIT": 60}
MCP_WORKER = str(Path(sys.executable).parent / "mcp-worker")


@pytest.mark.parametrize("transport", ["stdio", "streamable_http"])
def test_progress_reaches_the_result_backend_before_the_end_and_the_row(
    transport: str,
    procs: Procs,
    redis_server: RedisServer,
    engine: sa.Engine,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Saving the service checks its command against this process's allow-list too.
    allowed = f"{os.environ['MCP_STDIO_ALLOWED_COMMANDS']} mcp-server-everything"
    monkeypatch.setenv("MCP_STDIO_ALLOWED_COMMANDS", allowed)
    reset_settings()

    def restore() -> None:
        monkeypatch.undo()
        reset_settings()

    request.addfinalizer(restore)
    if transport == "stdio":
        url = f"{everything_binary()} stdio"
    else:
        url = request.getfixturevalue("everything_http")
    env = worker_env(redis_server.url(), **TIMEOUTS)
    worker = start_tools_worker(procs, "progress", env)
    user = unique("progress")
    add_service(engine, user, "everything", transport, url)

    result = submit_tool(
        user,
        "everything",
        "trigger-long-running-operation",
        {"duration": STEPS, "steps": STEPS},
        app=worker.app,
    )
    states: list[dict[str, Any]] = []

    def progress_while_running() -> bool:
        if result.state != "PROGRESS":
            return False
        states.append(dict(result.info))
        # Read after the state: the call is still running once PROGRESS is already visible.
        return rows(engine, [result.id]).get(result.id, {}).get("status") == "running"

    wait_until(progress_while_running, SEEN_TIMEOUT_S, "a PROGRESS state while the call runs", interval=0.1)
    final = wait_final(engine, [result.id], FINAL_TIMEOUT_S, worker.tail)[result.id]

    assert states[-1]["total"] == STEPS and 1 <= states[-1]["progress"] <= STEPS
    assert final["status"] == "success", final["error_message"]
    assert final["progress"] == {"progress": STEPS, "total": STEPS, "message": None}
    assert result.get(timeout=30)["status"] == "success"


def test_call_wait_shows_progress_live(procs: Procs, redis_server: RedisServer, engine: sa.Engine) -> None:
    _, url = start_demo(procs)
    env = worker_env(redis_server.url(), **TIMEOUTS)
    start_tools_worker(procs, "progress-cli", env)
    user = unique("progress-cli")
    add_service(engine, user, "demo", "streamable_http", url)

    arguments = json.dumps({"steps": 4, "every": 0.8})
    done = subprocess.run(
        [MCP_WORKER, "call", user, "demo", "count_up", "--args", arguments, "--wait", "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("progress ")]
    # Shown while the call ran: earlier steps are on stderr, not only the final one.
    assert lines[-1] == "progress 4/4: step 4 of 4", done.stderr
    assert len(lines) >= 2, done.stderr
    row = json.loads(done.stdout)
    assert row["status"] == "success"
    assert row["progress"] == {"progress": 4, "total": 4, "message": "step 4 of 4"}
