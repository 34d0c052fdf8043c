"""`mcp-worker health`: each component up and down, services, stuck rows, and no secret in sight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from processes import Proc, free_port
from testenv import DEMO_HTTP_TOKEN, extra_redis_url

from worker.db.engine import session_scope
from worker.db.models import McpExecution
from worker.execution import audit
from worker.ops.health import STUCK_REASON, Check, Status, bounded, find_stuck, one_line, stuck_cutoff
from worker.services.store import remove_service, save_service
from worker.settings import get_settings

CLI = [sys.executable, "-m", "worker.cli"]
# The CLI's own bound is a few seconds per check; this only stops a runaway test.
RUN_TIMEOUT_S = 90


def health(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """Run `mcp-worker health --json ...` as a probe would; returns (exit code, JSON, stderr)."""
    done = subprocess.run(
        [*CLI, "health", "--json", *args],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def by_component(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["component"]: c for c in report["checks"]}


def test_everything_up_with_a_worker_running(worker_proc: Proc) -> None:
    code, report, stderr = health("--timeout", "5")
    checks = by_component(report)
    assert code == 0, report
    assert report["healthy"] is True
    assert checks["database"]["status"] == "ok" and "(head)" in checks["database"]["detail"]
    assert checks["broker"]["status"] == "ok"
    assert checks["workers"]["status"] == "ok"
    assert worker_proc.name in checks["workers"]["detail"]
    # Rows other tests left running (killed workers) may warn; a warning never fails the probe.
    assert checks["stuck executions"]["status"] in ("ok", "warn")
    assert stderr == ""


def test_table_output_names_every_component(worker_proc: object) -> None:
    done = subprocess.run(
        [*CLI, "health"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    header, _, *rows = done.stdout.splitlines()
    assert header.split() == ["component", "status", "detail"]
    assert {row.split()[0] for row in rows} >= {"database", "broker", "workers"}


def test_broker_down_is_named_and_its_password_never_shown() -> None:
    password = f"brokerpw-{uuid.uuid4().hex[:8]}"
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}
    code, report, stderr = health("--timeout", "2", env=env)
    checks = by_component(report)
    assert code == 1
    assert checks["broker"]["status"] == "down"
    assert checks["workers"]["status"] == "down"
    assert checks["database"]["status"] == "ok"
    assert "broker" in stderr and "unhealthy" in stderr
    assert password not in json.dumps(report) + stderr
    assert all("\n" not in c["detail"] for c in report["checks"])


def test_database_down_is_named_and_its_password_never_shown() -> None:
    password = f"dbpw-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://postgres:{password}@127.0.0.1:{free_port()}/nothing",
    }
    code, report, stderr = health("--timeout", "2", env=env)
    checks = by_component(report)
    assert code == 1
    assert checks["database"]["status"] == "down"
    assert "127.0.0.1" in checks["database"]["detail"]
    assert checks["broker"]["status"] == "ok"
    assert "database" in stderr
    assert password not in json.dumps(report) + stderr
    # Without a database the stuck-row check cannot run, and the services are not listed.
    assert "stuck executions" not in checks


def test_no_worker_is_down() -> None:
    # A Redis database no worker consumes: the broker is up, nobody answers the ping.
    url = extra_redis_url()
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}
    code, report, stderr = health("--timeout", "1", env=env)
    checks = by_component(report)
    assert code == 1
    assert checks["broker"]["status"] == "ok"
    assert checks["workers"]["status"] == "down"
    assert "no worker answered" in checks["workers"]["detail"]
    assert "workers" in stderr


def test_a_named_worker_must_answer(worker_proc: Proc) -> None:
    code, report, _ = health("--timeout", "3", "--worker", worker_proc.name)
    assert code == 0
    assert by_component(report)["workers"]["detail"] == f"1 answered: {worker_proc.name}"

    code, report, stderr = health(
        "--timeout", "1", "--worker", worker_proc.name, "--worker", "nobody@nowhere"
    )
    workers = by_component(report)["workers"]
    assert code == 1 and "workers" in stderr
    assert workers["status"] == "down" and "nobody@nowhere" in workers["detail"]
    assert worker_proc.name not in workers["detail"]


@pytest.fixture
def services(clean_db: None, demo_http: str) -> Iterator[dict[str, str]]:
    """One reachable service and one whose server is gone, each with a recognisable key."""
    user = f"ops-{uuid.uuid4().hex[:6]}"
    dead_key = f"sk-live-HEALTHDEAD-{uuid.uuid4().hex}"
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "pm-http",
                "interaction_mode": "streamable_http",
                "url": demo_http,
                "api_key": DEMO_HTTP_TOKEN,
            },
        )
        save_service(
            session,
            {
                "user_id": user,
                "desc": "gone",
                "interaction_mode": "streamable_http",
                "url": f"http://127.0.0.1:{free_port()}/mcp",
                "api_key": dead_key,
            },
        )
    yield {"user": user, "live_key": DEMO_HTTP_TOKEN, "dead_key": dead_key}
    with session_scope() as session:
        for desc in ("pm-http", "gone"):
            remove_service(session, user, desc)


def test_services_are_checked_one_by_one_without_showing_keys(
    worker_proc: object, services: dict[str, str]
) -> None:
    user = services["user"]
    code, report, stderr = health("--services", "--timeout", "3")
    checks = by_component(report)
    assert checks[f"service {user}/pm-http"]["status"] == "ok"
    assert "tool(s)" in checks[f"service {user}/pm-http"]["detail"]
    assert checks[f"service {user}/gone"]["status"] == "down"
    assert checks["services"]["detail"] == "2 configured"
    assert code == 1
    assert f"service {user}/gone" in stderr
    text = json.dumps(report) + stderr
    assert services["live_key"] not in text
    assert services["dead_key"] not in text


def _running_row(
    started_ago: timedelta, lease_left: timedelta | None, attempts: int = 1, status: str = "running"
) -> str:
    """A `running` row whose attempt began `started_ago` (first attempt) with `lease_left` to run
    on its lease (negative: ran out that long ago; None: a row from before leases). A `retrying`
    row's lease is the deadline of its retry."""
    task_id = f"stuck-{uuid.uuid4()}"
    now = datetime.now(UTC)
    with session_scope() as session:
        session.add(
            McpExecution(
                task_id=task_id,
                user_id="ops",
                tool_desc="pm",
                tool_name="echo",
                status=status,
                attempts=attempts,
                started_at=now - started_ago,
                lease_owner=None if lease_left is None else "some-worker",
                lease_expires_at=None if lease_left is None else now + lease_left,
            )
        )
    return task_id


def _row(task_id: str) -> McpExecution:
    with session_scope() as session:
        row = audit.get(session, task_id)
        assert row is not None
        return row


def test_stuck_rows_are_reported_and_fixed_only_when_asked(clean_db: None) -> None:
    settings = get_settings()
    now = datetime.now(UTC)
    # A dead holder's message comes back within the visibility timeout and a sweep after its
    # lease ran out; only a row still expired after that has no delivery left.
    grace = now - stuck_cutoff(settings, now)
    hour = timedelta(hours=1)
    dead = _running_row(grace + hour, lease_left=-(grace + timedelta(seconds=30)))
    legacy = _running_row(grace + hour, lease_left=None)
    live = _running_row(timedelta(seconds=5), lease_left=timedelta(seconds=60))
    # Past its lease, but its redelivery may still be on the way.
    overtime = _running_row(grace, lease_left=-(grace - timedelta(seconds=30)))
    # The third attempt of a task that first started hours ago, on a fresh lease.
    retried = _running_row(10 * hour, lease_left=timedelta(seconds=60), attempts=3)
    # A retry whose message was lost, and one still due.
    lost_retry = _running_row(hour, lease_left=-(grace + timedelta(seconds=30)), status="retrying")
    due_retry = _running_row(hour, lease_left=timedelta(seconds=60), status="retrying")

    found = find_stuck(settings)
    assert [r["task_id"] for r in found] == [dead, legacy, lost_retry]
    assert _row(dead).status == "running"

    fixed = find_stuck(settings, fix=True)
    assert [r["task_id"] for r in fixed] == [dead, legacy, lost_retry]
    for task_id in (dead, legacy, lost_retry):
        row = _row(task_id)
        assert row.status == "error"
        assert row.error_message == STUCK_REASON
        assert row.finished_at is not None
    for task_id in (live, overtime, retried):
        assert _row(task_id).status == "running"
    assert _row(due_retry).status == "retrying"
    assert find_stuck(settings) == []


def test_health_fix_stuck_reports_a_warning_not_an_outage(worker_proc: Proc, clean_db: None) -> None:
    stuck = _running_row(timedelta(days=1), lease_left=-timedelta(hours=23))
    code, report, _ = health("--timeout", "5")
    check = by_component(report)["stuck executions"]
    assert check["status"] == "warn" and "1 row(s)" in check["detail"]
    assert code == 0
    assert _row(stuck).status == "running"

    code, report, _ = health("--timeout", "5", "--fix-stuck")
    assert code == 0
    assert "marked 1 row(s) error" in by_component(report)["stuck executions"]["detail"]
    assert _row(stuck).status == "error"
    with session_scope() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(McpExecution)) == 1


def test_a_check_that_hangs_is_reported_down_after_its_timeout() -> None:
    release = threading.Event()

    def hangs() -> Check:
        release.wait(30)
        return Check("slow", Status.OK, "late")

    try:
        result = bounded("slow", hangs, 0.2)()
    finally:
        release.set()
    assert result == Check("slow", Status.DOWN, "no answer within 0.2s")


def test_a_check_that_raises_is_one_redacted_line() -> None:
    def raises() -> Check:
        raise RuntimeError("first line\nsecond line with Bearer abcdefgh12345")

    assert bounded("x", raises, 5)() == Check("x", Status.DOWN, "RuntimeError: first line")
    detail = one_line(ValueError("refused key sk-live-ONELINE-0001 at host"), ["sk-live-ONELINE-0001"])
    assert detail == "ValueError: refused key *** at host"
    assert len(one_line(ValueError("x" * 1000))) <= 200
