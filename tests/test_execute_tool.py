"""`mcp.execute_tool` end to end: a real worker process, Redis, Postgres and real MCP servers."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from processes import start_demo_server, wait_until
from testenv import BROKER_URL, DEMO_HTTP_TOKEN, DEMO_SSE_TOKEN, LOG_DIR

from worker.client import submit_tool
from worker.db.engine import session_scope
from worker.db.models import McpService
from worker.errors import InvalidArguments
from worker.execution import audit
from worker.services.store import save_service

STDIO_COMMAND = f"{shlex.quote(sys.executable)} -m worker.demo.server --transport stdio --test-tools"
# Generous bounds for waits on a shared 2-core machine; nothing asserts on time.
ROW_TIMEOUT_S = 90.0

pytestmark = pytest.mark.usefixtures("worker_proc")


def add_service(user: str, desc: str, mode: str, url: str | None, key: str, **extra: Any) -> None:
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": desc,
                "interaction_mode": mode,
                "url": url,
                "api_key": key,
                "endpoint": "https://openproject.example",
                **extra,
            },
        )


def final_row(task_id: str, timeout: float = ROW_TIMEOUT_S) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with session_scope() as session:
            row = audit.get(session, task_id)
            if row is not None and row.status in ("success", "error"):
                return audit.as_dict(row)
        return None

    return wait_until(done, timeout, f"execution row of {task_id}", interval=0.1)  # type: ignore[no-any-return]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@pytest.fixture
def services(demo_http: str, demo_sse: str) -> Iterator[str]:
    """alice's three services (one per transport) under a fresh user id."""
    user = f"alice-{uuid.uuid4().hex[:6]}"
    add_service(user, "pm-http", "streamable_http", demo_http, DEMO_HTTP_TOKEN, params={"project_id": 1})
    add_service(user, "pm-sse", "sse", demo_sse, DEMO_SSE_TOKEN, params={"project_id": 5})
    add_service(user, "pm-stdio", "stdio", STDIO_COMMAND, "alice-stdio-key", params={"project_id": 10})
    yield user


@pytest.mark.parametrize(("desc", "project"), [("pm-http", 1), ("pm-sse", 5), ("pm-stdio", 10)])
def test_the_same_call_succeeds_over_each_transport(services: str, desc: str, project: int) -> None:
    result = submit_tool(services, desc, "fetch_weekly_report", {"week": "2026-W47"})
    row = final_row(result.id)
    assert row["status"] == "success", row["error_message"]
    assert row["result"]["project"]["id"] == project
    assert row["result"]["week"] == "2026-W47"
    assert len(row["result"]["work_packages"]) > 0
    assert row["params"] == {"project_id": project, "week": "2026-W47"}
    assert row["attempts"] == 1 and row["execution_time_ms"] is not None
    summary = result.get(timeout=30)
    assert summary["status"] == "success" and summary["execution_id"] == row["id"]


def test_a_warm_worker_reuses_one_stdio_server_per_process(services: str) -> None:
    task_ids = [submit_tool(services, "pm-stdio", "whoami", {}).id for _ in range(20)]
    rows = [final_row(t) for t in task_ids]
    assert all(r["status"] == "success" for r in rows)
    pids = {r["result"]["pid"] for r in rows}
    # Two worker processes: at most one stdio server each, however many calls.
    assert 1 <= len(pids) <= 2


def test_two_users_with_the_same_server_never_share_a_session(demo_sse: str) -> None:
    proc, open_url = start_demo_server("streamable-http", LOG_DIR, token=None)
    try:
        for mode, url in (("streamable_http", open_url), ("stdio", STDIO_COMMAND)):
            keys = {
                f"u1-{uuid.uuid4().hex[:6]}": "key-of-user-one",
                f"u2-{uuid.uuid4().hex[:6]}": "key-of-user-two",
            }
            for user, key in keys.items():
                add_service(user, "shared", mode, url, key)
            for _ in range(3):
                for user, key in keys.items():
                    row = final_row(submit_tool(user, "shared", "whoami", {}).id)
                    assert row["status"] == "success", row["error_message"]
                    assert row["result"]["key_sha256"] == digest(key)
    finally:
        proc.stop()


def test_a_producer_that_does_not_import_worker_gets_a_success_row(services: str) -> None:
    task_id = f"raw-{uuid.uuid4()}"
    script = (
        "import sys, celery\n"
        f"app = celery.Celery(broker={BROKER_URL!r})\n"
        "app.send_task('mcp.execute_tool', task_id=sys.argv[1], queue='mcp.tools',\n"
        f"    kwargs={{'user_id': {services!r}, 'service': 'pm-http', 'tool': 'echo', 'arguments': {{'message': 'hi'}}}})\n"
        "assert 'worker' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_"))}
    subprocess.run([sys.executable, "-c", script, task_id], check=True, env=env, cwd="/", timeout=60)
    row = final_row(task_id)
    assert row["status"] == "success", row["error_message"]
    assert "hi" in json.dumps(row["result"])


def test_the_same_task_id_twice_gives_one_row_and_one_call(services: str, worker_proc: Any) -> None:
    task_id = f"dup-{uuid.uuid4()}"
    first = submit_tool(services, "pm-http", "echo", {"message": "once"}, task_id=task_id)
    assert first.get(timeout=60)["cached"] is False
    submit_tool(services, "pm-http", "echo", {"message": "once"}, task_id=task_id)
    # The second delivery finds the success row and returns it without calling the server.
    wait_until(
        lambda: any(
            task_id in line and "already succeeded" in line for line in worker_proc.log().splitlines()
        ),
        ROW_TIMEOUT_S,
        "the second delivery to be answered from the stored row",
    )
    with session_scope() as session:
        from sqlalchemy import func, select

        from worker.db.models import McpExecution

        count = session.scalar(select(func.count()).where(McpExecution.task_id == task_id))
    row = final_row(task_id)
    assert count == 1 and row["attempts"] == 1 and row["status"] == "success"


@pytest.mark.parametrize(
    ("service", "tool", "arguments", "expected"),
    [
        ("no-such-service", "echo", {}, "ServiceNotFound: no MCP service 'no-such-service'"),
        ("pm-http", "no_such_tool", {}, "UnknownTool"),
        ("pm-http", "fetch_weekly_report", {"project_id": "not-a-number"}, "ToolInputRejected"),
        (
            "pm-stdio",
            "fail",
            {"message": "the project is archived"},
            "ToolFailed: tool 'fail' reported an error",
        ),
        ("pm-stdio", "fetch_weekly_report", {"project_id": 999}, "ToolFailed"),
    ],
)
def test_permanent_failures_end_in_an_error_row_at_once(
    services: str, service: str, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    row = final_row(submit_tool(services, service, tool, arguments).id)
    assert row["status"] == "error"
    assert expected in row["error_message"]
    assert row["attempts"] == 1
    assert "\n" not in row["error_message"]


def test_a_disallowed_stdio_command_is_refused(services: str) -> None:
    from worker.errors import CommandNotAllowed

    with pytest.raises(CommandNotAllowed, match="MCP_STDIO_ALLOWED_COMMANDS"):
        add_service(services, "evil", "stdio", "/bin/sh -c 'echo pwned'", "k")
    # A row written around the CLI (plain SQL) is still refused when called.
    with session_scope() as session:
        session.add(
            McpService(
                user_id=services,
                desc="evil",
                interaction_mode="stdio",
                api_key="k",
                url="/bin/sh -c 'echo pwned'",
            )
        )
    row = final_row(submit_tool(services, "evil", "echo", {"message": "x"}).id)
    assert row["status"] == "error" and row["attempts"] == 1
    assert (
        "CommandNotAllowed" in row["error_message"] and "MCP_STDIO_ALLOWED_COMMANDS" in row["error_message"]
    )


def test_a_dead_server_is_retried_then_fails(services: str) -> None:
    from processes import free_port

    add_service(services, "down", "streamable_http", f"http://127.0.0.1:{free_port()}/mcp", "k")
    row = final_row(submit_tool(services, "down", "echo", {"message": "x"}).id)
    assert row["status"] == "error"
    assert row["attempts"] == 3  # MCP_MAX_RETRIES=2 in the tests: the first try and two retries
    assert "ServerUnavailable" in row["error_message"]


def test_a_hung_server_times_out_is_retried_then_fails(services: str) -> None:
    row = final_row(submit_tool(services, "pm-http", "sleep", {"seconds": 60}).id, timeout=150)
    assert row["status"] == "error" and row["attempts"] == 3
    assert "ServerTimeout" in row["error_message"]
    # The worker is still serving.
    assert (
        final_row(submit_tool(services, "pm-http", "echo", {"message": "still here"}).id)["status"]
        == "success"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "svc", "echo", {}), "user_id is required"),
        (("u", None, "echo", {}), "service is required"),
        (("u", "svc", "echo", ["not", "an", "object"]), "arguments must be a JSON object"),
        (("u" * 51, "svc", "echo", {}), "user_id is longer than 50"),
        (("u", "svc", "echo", {"blob": "x" * 300_000}), "over MCP_MAX_ARGUMENT_BYTES"),
    ],
)
def test_the_producer_refuses_malformed_calls_before_sending(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(InvalidArguments, match=message):
        submit_tool(*args)


def test_a_running_call_is_running_in_its_row_and_pending_in_the_result_backend(services: str) -> None:
    """Tool calls store no STARTED state (two Redis round trips per call); the row says running.
    Reports, which take seconds, do store it."""
    from worker.celery import app

    result = submit_tool(services, "pm-http", "sleep", {"seconds": 3})

    def running() -> bool:
        with session_scope() as session:
            row = audit.get(session, result.id)
            return row is not None and row.status == "running"

    wait_until(running, ROW_TIMEOUT_S, f"execution row of {result.id} to say running", interval=0.05)
    assert result.state == "PENDING"
    assert final_row(result.id)["status"] == "success"
    assert result.get(timeout=ROW_TIMEOUT_S)["status"] == "success"
    assert app.tasks["mcp.generate_report"].track_started is True
