"""`mcp-worker worker`, `beat` and `demo-server` pass every option through, `--help` included,
and `mcp-worker --version` answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest
from processes import ping, spawn, wait_until
from testenv import BROKER_URL, LOG_DIR

from worker import mcp
from worker.db.engine import session_scope
from worker.execution import audit
from worker.processes import free_port, port_open
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
