"""Long-running calls as MCP tasks: server-everything's `simulate-research-query` (task support
"required") on the production tools worker. The worker starts the call as a task, records the
server's task id on the row, and polls it by re-sending itself with a countdown (no worker slot or
thread held between polls) until `tasks/result` gives the report: one row, one attempt. And a
worker SIGKILLed between polls: a new one resumes polling from the row, and the server's task is
not started twice (against tests/progress/task_server.py, whose tasks outlive a session;
server-everything keeps its tasks per session, which a killed worker's session takes along)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from fault_helpers import (
    Procs,
    RedisServer,
    add_service,
    kill_proc,
    row_counts,
    rows,
    start_tools_worker,
    unique,
    wait_final,
    worker_env,
)
from processes import everything_binary, free_port, wait_until

from worker import mcp
from worker.client import submit_tool
from worker.processes import port_open
from worker.services.config import ServiceConfig
from worker.settings import reset_settings

FINAL_TIMEOUT_S = 90.0
TASK_SERVER = Path(__file__).with_name("task_server.py")
MCP_WORKER = str(Path(sys.executable).parent / "mcp-worker")


@pytest.mark.parametrize("transport", ["stdio", "streamable_http"])
def test_a_task_based_tool_completes_through_the_tasks_path(
    transport: str,
    procs: Procs,
    redis_server: RedisServer,
    engine: sa.Engine,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "MCP_STDIO_ALLOWED_COMMANDS", f"{os.environ['MCP_STDIO_ALLOWED_COMMANDS']} mcp-server-everything"
    )
    reset_settings()

    def restore() -> None:
        monkeypatch.undo()
        reset_settings()

    request.addfinalizer(restore)
    url = (
        f"{everything_binary()} stdio" if transport == "stdio" else request.getfixturevalue("everything_http")
    )
    # One process: server-everything keeps its tasks per session (per stdio child), and without
    # `worker_direct` a poll may land on any process of the worker (see docs/mcp-tasks.md).
    worker = start_tools_worker(procs, "tasks", worker_env(redis_server.url(), MCP_TOOLS_PROCESSES=1))
    user = unique("tasks")
    add_service(engine, user, "everything", transport, url)

    result = submit_tool(user, "everything", "simulate-research-query", {"topic": "tides"}, app=worker.app)
    row = wait_final(engine, [result.id], FINAL_TIMEOUT_S, worker.tail)[result.id]

    assert row["status"] == "success", row["error_message"]
    assert "Research Report: tides" in row["result"][0]
    assert row["server_task_id"]
    assert row["attempts"] == 1
    assert result.get(timeout=30)["status"] == "success"
    # Started once, then polled: the log names one start and at least one poll.
    assert worker.log().count(f"runs as the server's task {row['server_task_id']}") == 1
    assert "deferring this delivery" in worker.log()
    assert len(rows(engine, [result.id])) == 1


def test_a_task_survives_a_worker_killed_between_polls(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    """A server whose tasks outlive the session (tests/progress/task_server.py): the worker is
    SIGKILLed once the row holds the server's task id, a new one picks the poll up from the row,
    and the task completes: one row, one attempt, the server's task started once."""
    url = _task_server(procs, task_seconds=8)
    # A short visibility timeout: the killed worker's unacked poll comes back within seconds.
    env = worker_env(redis_server.url(), MCP_VISIBILITY_TIMEOUT=5)
    first = start_tools_worker(procs, "tasks-kill", env)
    user = unique("tasks-kill")
    add_service(engine, user, "slow", "streamable_http", url)

    result = submit_tool(user, "slow", "slow_report", {"topic": "tides"}, app=first.app)
    started = wait_until(
        lambda: rows(engine, [result.id]).get(result.id, {}).get("server_task_id"),
        60,
        "the row to hold the server's task id",
        interval=0.1,
    )
    kill_proc(first.proc)
    second = start_tools_worker(procs, "tasks-kill-2", env)
    row = wait_final(engine, [result.id], FINAL_TIMEOUT_S, second.tail)[result.id]

    assert row["status"] == "success", row["error_message"]
    assert row["result"] == ["report on tides"]
    assert (row["server_task_id"], row["attempts"]) == (started, 1)
    assert row_counts(engine, [result.id]) == {result.id: 1}
    starts = mcp.call_tool(_probe(url), "task_starts", {}).result
    assert starts == {"starts": 1, "ids": [started], "cancelled": []}
    assert f"runs as the server's task {started}" not in second.log()


def _probe(url: str) -> ServiceConfig:
    return ServiceConfig(
        user_id="probe",
        desc="probe",
        mode="streamable_http",
        url=url,
        endpoint=None,
        api_key="",
        params={},
        auth={},
    )


def test_cancelling_a_call_between_polls_cancels_the_servers_task(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    url = _task_server(procs, task_seconds=120)
    env = worker_env(redis_server.url())
    worker = start_tools_worker(procs, "tasks-cancel", env)
    user = unique("tasks-cancel")
    add_service(engine, user, "slow", "streamable_http", url)
    result = submit_tool(user, "slow", "slow_report", {"topic": "tides"}, app=worker.app)
    started = wait_until(
        lambda: rows(engine, [result.id]).get(result.id, {}).get("server_task_id"),
        60,
        "the row to hold the server's task id",
        interval=0.1,
    )

    done = subprocess.run(
        [MCP_WORKER, "executions", "cancel", result.id], env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "task_id": result.id,
        "status": "cancelled",
        "cancelled": True,
        "server_task": "cancelled",
    }
    assert mcp.call_tool(_probe(url), "task_starts", {}).result["cancelled"] == [started]
    # The poll that was due finds the row cancelled: the task ends REVOKED, not retried.
    wait_until(lambda: result.state == "REVOKED", 60, "the task state REVOKED", interval=0.2)
    row = rows(engine, [result.id])[result.id]
    assert (row["status"], row["attempts"]) == ("cancelled", 1)


def _task_server(procs: Procs, *, task_seconds: float, poll_ms: int = 3000) -> str:
    port = free_port()
    argv = [sys.executable, str(TASK_SERVER), "--port", str(port)]
    argv += ["--task-seconds", str(task_seconds), "--poll-ms", str(poll_ms)]
    server = procs.spawn(f"task-server-{port}", argv)
    wait_until(lambda: port_open(port) or not server.alive(), 30, "the task server to listen")
    return f"http://127.0.0.1:{port}/mcp"
