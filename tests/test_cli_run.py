"""`mcp-worker worker`, `beat` and `demo-server` pass every option through, `--help` included,
and `mcp-worker --version` answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest
from processes import broker_env, ping, spawn, wait_until
from testenv import BROKER_URL, LOG_DIR, extra_redis_url

from worker import mcp
from worker.cli.supervise import node_names
from worker.db.engine import session_scope
from worker.execution import audit
from worker.processes import children, cmdline, free_port, gone, port_open
from worker.services.config import ServiceConfig
from worker.services.store import save_service

CLI = [sys.executable, "-m", "worker.cli"]
START_TIMEOUT_S = 60.0
ROW_TIMEOUT_S = 60.0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def test_version_answers() -> None:
    done = _run("--version")
    assert done.returncode == 0 and done.stdout.startswith("mcp-worker "), done


def test_demo_server_help_is_the_demo_servers_own() -> None:
    done = _run("demo-server", "--help")
    assert done.returncode == 0, done.stderr
    assert "--transport" in done.stdout and "--port" in done.stdout


def test_worker_help_is_celerys() -> None:
    done = _run("worker", "--help")
    assert done.returncode == 0, done.stderr
    assert "--concurrency" in done.stdout and "--queues" in done.stdout


@pytest.mark.parametrize(("transport", "path"), [("sse", "/sse"), ("streamable-http", "/mcp")])
def test_demo_server_listens_on_the_given_transport_and_port(transport: str, path: str) -> None:
    port = free_port()
    proc = spawn(
        f"cli-demo-{transport}-{port}",
        [*CLI, "demo-server", "--transport", transport, "--port", str(port)],
        os.environ,
        LOG_DIR,
    )
    try:
        wait_until(lambda: port_open(port) or not proc.alive(), START_TIMEOUT_S, f"the demo server on {port}")
        assert proc.alive(), proc.log()
        mode = "sse" if transport == "sse" else "streamable_http"
        config = ServiceConfig(
            user_id="u",
            desc=f"cli-{transport}",
            mode=mode,
            url=f"http://127.0.0.1:{port}{path}",
            endpoint=None,
            api_key="",
        )
        outcome = mcp.call_tool(config, "fetch_weekly_report", {"project_id": 1, "week": "2026-W47"})
        assert not outcome.is_error and outcome.result["work_packages"]
    finally:
        proc.stop()


def test_worker_with_celery_options_serves_a_call(demo_http: str) -> None:
    from testenv import DEMO_HTTP_TOKEN

    user = f"cli-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "pm",
                "interaction_mode": "http",
                "url": demo_http,
                "api_key": DEMO_HTTP_TOKEN,
            },
        )
    hostname = f"cli-run-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    # A queue of its own, so no other worker of the run takes the call.
    queue = f"cli-run-{uuid.uuid4().hex[:6]}"
    argv = [*CLI, "worker", "-Q", queue, "-c", "2", "-n", hostname, "--without-gossip", "--without-mingle"]
    proc = spawn(hostname.split("@")[0], argv, os.environ, LOG_DIR)
    try:
        wait_until(
            lambda: ping(BROKER_URL, hostname) or not proc.alive(), START_TIMEOUT_S, f"{hostname} to answer"
        )
        assert proc.alive(), proc.log()
        from worker.celery import app

        task_id = str(uuid.uuid4())
        app.send_task(
            "mcp.execute_tool",
            kwargs={
                "user_id": user,
                "service": "pm",
                "tool": "fetch_weekly_report",
                "arguments": {"project_id": 1},
            },
            task_id=task_id,
            queue=queue,
        )

        def final() -> dict[str, Any] | None:
            with session_scope() as session:
                row = audit.get(session, task_id)
                return audit.as_dict(row) if row is not None and row.status != "running" else None

        row = wait_until(final, ROW_TIMEOUT_S, f"the row of {task_id}", interval=0.1)
        assert row["status"] == "success", row
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("given", "added"),
    [
        ([], ["-P", "threads", "-c", "200", "--prefetch-multiplier", "1"]),
        (["-c", "50"], ["-P", "threads", "--prefetch-multiplier", "1"]),
        (["--concurrency=50", "--prefetch-multiplier=4"], ["-P", "threads"]),
        (["-P", "prefork", "-c", "8"], []),
        (["--pool=prefork"], []),
    ],
)
def test_the_tools_worker_defaults_to_threads_unless_a_pool_is_given(
    given: list[str], added: list[str]
) -> None:
    from worker.cli.run import tools_pool_defaults

    assert tools_pool_defaults(["-Q", "mcp.tools", *given], 200) == added


def _supervised(processes: int) -> tuple[Any, str, list[str], dict[str, str]]:
    """`mcp-worker worker -Q mcp.tools` (its own Redis database) with MCP_TOOLS_PROCESSES set,
    once each of its processes answers a ping."""
    broker = extra_redis_url()
    env = {**os.environ, "CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker}
    env["MCP_TOOLS_PROCESSES"] = str(processes)
    name = f"sup-{uuid.uuid4().hex[:6]}"
    argv = [*CLI, "worker", "-Q", "mcp.tools", "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
    proc = spawn(name, argv, env, LOG_DIR)
    nodes = node_names(f"{name}@{socket.gethostname()}", processes)
    for node in nodes:
        proc.wait_for(lambda node=node: ping(broker, node), START_TIMEOUT_S, f"{node} to answer")
    return proc, f"{name}@{socket.gethostname()}", nodes, env


def test_the_tools_worker_runs_one_threads_process_each_and_stops_them_all() -> None:
    from celery import Celery

    proc, name, nodes, env = _supervised(2)
    try:
        with broker_env(env["CELERY_BROKER_URL"]):
            app = Celery("inspect")
            stats = app.control.inspect(destination=nodes, timeout=5).stats() or {}
            app.close()
        assert set(stats) == set(nodes)
        for node in nodes:
            assert "thread" in stats[node]["pool"]["implementation"]
            assert stats[node]["pool"]["max-concurrency"] == 200
        health = subprocess.run(
            [*CLI, "health", "--timeout", "3", "--worker", name],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0, health.stdout + health.stderr
        workers = children(proc.pid)
        assert len(workers) == 2
        assert all("-m worker.cli.worker_process " in cmdline(pid) for pid in workers)
    finally:
        code = proc.stop()
    assert code == 0, proc.tail()
    assert all(gone(pid) for pid in workers)


def test_the_tools_worker_stops_when_one_of_its_processes_dies() -> None:
    proc, _, _, _ = _supervised(2)
    try:
        first, second = children(proc.pid)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not proc.alive(), START_TIMEOUT_S, "the supervisor to exit")
        assert proc.popen.returncode == 128 + signal.SIGKILL
        wait_until(lambda: gone(second), 10, "the other worker process to stop")
        assert "stopping the others" in proc.log()
    finally:
        proc.stop()
