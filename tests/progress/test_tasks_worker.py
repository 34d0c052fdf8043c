"""Long-running calls as MCP tasks: server-everything's `simulate-research-query` (task support
"required") on the production tools worker (two processes).

Over streamable HTTP the worker starts the call as a task, records the server's task id and the
HTTP session it lives in (server-everything keeps tasks per session) on the row, and polls it by
re-sending itself with a countdown (no worker slot or thread held between polls), from whichever
process, in that session, until `tasks/result` gives the report: one row, one attempt. A worker
SIGKILLed between polls: a new one resumes polling from the row, and a counting proxy in front of
the server sees the task started once. Over stdio a task lives in the child's connection, which
no other process can reach: it is polled on that connection within the call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from fault_helpers import (
    Procs,
    RedisServer,
    Worker,
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
from progress_helpers import start_everything_http

from worker import mcp
from worker.client import submit_tool
from worker.processes import port_open
from worker.services.config import ServiceConfig
from worker.settings import reset_settings

FINAL_TIMEOUT_S = 90.0
TASK_SERVER = Path(__file__).with_name("task_server.py")
COUNTING_PROXY = Path(__file__).with_name("counting_proxy.py")
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
    worker = start_tools_worker(procs, "tasks", worker_env(redis_server.url()))
    user = unique("tasks")
    add_service(engine, user, "everything", transport, url)

    result = submit_tool(user, "everything", "simulate-research-query", {"topic": "tides"}, app=worker.app)
    row = wait_final(engine, [result.id], FINAL_TIMEOUT_S, worker.tail)[result.id]

    assert row["status"] == "success", row["error_message"]
    assert "Research Report: tides" in row["result"][0]
    assert row["attempts"] == 1
    assert result.get(timeout=30)["status"] == "success"
    assert len(rows(engine, [result.id])) == 1
    if transport == "stdio":
        # Started once and followed on the child's connection, within the one delivery.
        assert worker.log().count("simulate-research-query runs as the server's task") == 1
        assert "polled on its connection" in worker.log()
        assert row["server_task_id"] is None
        return
    # Started once, then polled by later deliveries, in the session it was started in.
    assert row["server_task_id"]
    assert worker.log().count(f"runs as the server's task {row['server_task_id']}") == 1
    assert "deferring this delivery" in worker.log()


def test_a_research_task_survives_a_worker_killed_between_polls(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine, everything_http: str
) -> None:
    """server-everything over streamable HTTP, behind a proxy that counts the task starts: the
    worker is SIGKILLed once the row holds the server's task id; a new one polls it, in the
    session the row names, to its end: one row, one attempt, one start at the server."""
    proxy = _counting_proxy(procs, everything_http)
    # A short visibility timeout: the killed worker's unacked poll comes back within seconds.
    env = worker_env(redis_server.url(), MCP_VISIBILITY_TIMEOUT=5)
    first = start_tools_worker(procs, "research-kill", env)
    user = unique("research-kill")
    add_service(engine, user, "everything", "streamable_http", f"{proxy}/mcp")

    result = submit_tool(user, "everything", "simulate-research-query", {"topic": "tides"}, app=first.app)
    started = _server_task_started(engine, result.id)
    second, row = _killed_and_resumed(procs, first, "research-kill-2", env, engine, result.id)

    assert row["status"] == "success", row["error_message"]
    assert "Research Report: tides" in row["result"][0]
    assert (row["server_task_id"], row["attempts"]) == (started, 1)
    assert row_counts(engine, [result.id]) == {result.id: 1}
    assert f"runs as the server's task {started}" not in second.log()
    counts = httpx2.get(f"{proxy}/counts", timeout=10).json()
    assert counts["task_calls"] == 1, counts
    # The new worker spoke in the row's session: it opened none of its own to poll.
    assert counts["initializes"] == 1, counts


def test_a_server_that_forgot_the_tasks_session_ends_the_row_with_a_clear_error(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    """server-everything restarted between polls forgets the session the task lived in: the
    poll fails for good, saying so, and the call is not started again."""
    port = free_port()
    url, server = start_everything_http(procs, port, "everything-first")
    worker = start_tools_worker(procs, "tasks-forgot", worker_env(redis_server.url()))
    user = unique("tasks-forgot")
    add_service(engine, user, "everything", "streamable_http", url)
    result = submit_tool(user, "everything", "simulate-research-query", {"topic": "tides"}, app=worker.app)
    started = _server_task_started(engine, result.id)
    kill_proc(server)
    start_everything_http(procs, port, "everything-again")

    row = wait_final(engine, [result.id], FINAL_TIMEOUT_S, worker.tail)[result.id]
    assert row["status"] == "error"
    assert f"the server no longer knows its task {started} and its session" in row["error_message"]
    assert worker.log().count("runs as the server's task") == 1


def test_a_session_that_started_a_task_is_kept_at_the_server_when_the_worker_closes_it(
    procs: Procs, everything_http: str
) -> None:
    """The runtime in this process: closing a plain session ends it at the server (`DELETE`);
    closing the one that started a task does not, and a new runtime still polls the task in it."""
    proxy = _counting_proxy(procs, everything_http)
    plain = _probe(f"{proxy}/mcp", api_key="plain")
    tasked = _probe(f"{proxy}/mcp", api_key="tasked")  # another credential: its own session
    try:
        assert mcp.call_tool(plain, "echo", {"message": "hi"}).is_error is False
        started = mcp.start_tool(tasked, "simulate-research-query", {"topic": "tides"})
        assert isinstance(started, mcp.TaskStarted)
        assert started.session is not None
        mcp.shutdown_runtime()
        assert httpx2.get(f"{proxy}/counts", timeout=10).json()["deletes"] == 1

        polled = mcp.poll_task(tasked, "simulate-research-query", started.task_id, session=started.session)
        assert polled.status in ("working", "completed"), polled
    finally:
        mcp.shutdown_runtime()
    counts = httpx2.get(f"{proxy}/counts", timeout=10).json()
    # The poll spoke in the task's session: no new handshake, and closing it ended nothing.
    assert (counts["initializes"], counts["deletes"], counts["task_calls"]) == (2, 1, 1), counts


def _counting_proxy(procs: Procs, upstream: str) -> str:
    port = free_port()
    argv = [sys.executable, str(COUNTING_PROXY), "--port", str(port), "--upstream", upstream]
    proxy = procs.spawn(f"counting-proxy-{port}", argv)
    wait_until(lambda: port_open(port) or not proxy.alive(), 30, "the counting proxy to listen")
    return f"http://127.0.0.1:{port}"


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
    started = _server_task_started(engine, result.id)
    second, row = _killed_and_resumed(procs, first, "tasks-kill-2", env, engine, result.id)

    assert row["status"] == "success", row["error_message"]
    assert row["result"] == ["report on tides"]
    assert (row["server_task_id"], row["attempts"]) == (started, 1)
    assert row_counts(engine, [result.id]) == {result.id: 1}
    starts = mcp.call_tool(_probe(url), "task_starts", {}).result
    assert starts == {"starts": 1, "ids": [started], "cancelled": []}
    assert f"runs as the server's task {started}" not in second.log()


def _server_task_started(engine: sa.Engine, task_id: str) -> str:
    """The server's task id, once the delivery that started the call recorded it on the row."""
    started: str = wait_until(
        lambda: rows(engine, [task_id]).get(task_id, {}).get("server_task_id"),
        60,
        "the row to hold the server's task id",
        interval=0.05,
    )
    return started


def _killed_and_resumed(
    procs: Procs, first: Worker, name: str, env: dict[str, str], engine: sa.Engine, task_id: str
) -> tuple[Worker, dict[str, Any]]:
    """SIGKILL `first`, start a new tools worker `name`, and wait for the row's end: the new
    worker and the final row."""
    kill_proc(first.proc)
    second = start_tools_worker(procs, name, env)
    return second, wait_final(engine, [task_id], FINAL_TIMEOUT_S, second.tail)[task_id]


def _probe(url: str, api_key: str = "") -> ServiceConfig:
    return ServiceConfig(
        user_id="probe",
        desc="probe",
        mode="streamable_http",
        url=url,
        endpoint=None,
        api_key=api_key,
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
    started = _server_task_started(engine, result.id)

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


def test_a_revoke_between_polls_ends_the_row_and_cancels_the_servers_task(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    """Celery's own revoke (as Flower sends it), not the CLI: the next poll comes due revoked, so
    the worker ends the row `cancelled` and cancels the server's task."""
    url = _task_server(procs, task_seconds=120, poll_ms=1000)
    worker = start_tools_worker(procs, "tasks-revoke", worker_env(redis_server.url()))
    user = unique("tasks-revoke")
    add_service(engine, user, "slow", "streamable_http", url)
    result = submit_tool(user, "slow", "slow_report", {"topic": "tides"}, app=worker.app)
    started = _server_task_started(engine, result.id)

    worker.app.control.revoke(result.id)

    wait_until(
        lambda: rows(engine, [result.id])[result.id]["status"] == "cancelled",
        FINAL_TIMEOUT_S,
        "the row to say cancelled",
        interval=0.2,
    )
    row = rows(engine, [result.id])[result.id]
    assert row["attempts"] == 1
    assert "revoked" in row["error_message"]
    wait_until(
        lambda: mcp.call_tool(_probe(url), "task_starts", {}).result["cancelled"] == [started],
        30,
        "the server's task to be cancelled",
        interval=0.2,
    )
    assert mcp.call_tool(_probe(url), "task_starts", {}).result["starts"] == 1


def _task_server(procs: Procs, *, task_seconds: float, poll_ms: int = 3000) -> str:
    port = free_port()
    argv = [sys.executable, str(TASK_SERVER), "--port", str(port)]
    argv += ["--task-seconds", str(task_seconds), "--poll-ms", str(poll_ms)]
    server = procs.spawn(f"task-server-{port}", argv)
    wait_until(lambda: port_open(port) or not server.alive(), 30, "the task server to listen")
    return f"http://127.0.0.1:{port}/mcp"
