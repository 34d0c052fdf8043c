"""Where a tool call meets its neighbours: the claim's time budget, a report whose service is
missing, a report delivery held by another one, and the redaction set's bound.

Each test here failed before the layout work that fixed it (issue 19's defects)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from processes import wait_until

from worker.client import submit_report
from worker.db.engine import autocommit, session_scope
from worker.db.models import McpReportSchedule
from worker.errors import ExecutionHeld
from worker.execution import audit
from worker.execution.call import run_tool_call
from worker.redaction import MASK, MAX_KNOWN_SECRETS, redact, register_secrets
from worker.reports.job import generate_report
from worker.scheduling.schedules import add_schedule
from worker.services.store import save_service
from worker.settings import Settings

ROW_TIMEOUT_S = 60.0
# A lease the waiting delivery cannot outwait: far beyond any soft time limit of these tests.
LONG_LEASE_S = 3600.0


def _service(user: str, desc: str, **params: Any) -> None:
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": desc,
                "interaction_mode": "http",
                # Nothing listens on the discard port: a call that got this far fails at once.
                "url": "http://127.0.0.1:9/mcp",
                "api_key": "seam-key-0001",
                "params": params,
            },
        )


def _hold(task_id: str, user: str, desc: str, tool: str, lease_seconds: float) -> None:
    """Another delivery of `task_id` holds its row under a live lease."""
    values = audit.claim_values(
        task_id=task_id,
        user_id=user,
        service=desc,
        tool=tool,
        params={},
        owner="another-delivery",
        lease_seconds=lease_seconds,
    )
    assert autocommit(lambda connection: audit.begin(connection, values)).claimed


@pytest.fixture
def user() -> Iterator[str]:
    yield f"seam-{uuid.uuid4().hex[:8]}"


def test_the_claim_budget_uses_the_services_own_timeouts(user: str) -> None:
    # Soft limit 30 s; the global timeouts (2 + 2) would leave 21 s to wait for a holder, but this
    # service's call may take 18 s, which leaves 5: a 10 s lease cannot be waited out.
    settings = Settings.from_env(
        {**os.environ, "MCP_TASK_SOFT_TIME_LIMIT": "30", "MCP_CONNECT_TIMEOUT": "2", "MCP_CALL_TIMEOUT": "2"}
    )
    _service(user, "slow-pm", call_timeout=18, connect_timeout=2)
    task_id = str(uuid.uuid4())
    _hold(task_id, user, "slow-pm", "echo", lease_seconds=10)

    with pytest.raises(ExecutionHeld) as held:
        run_tool_call(
            task_id=task_id,
            user_id=user,
            service="slow-pm",
            tool="echo",
            arguments={},
            final_attempt=False,
            settings=settings,
        )
    assert 0 < held.value.retry_after <= 10 + 1


def test_a_held_report_is_not_counted_against_its_schedule(user: str) -> None:
    _service(user, "weekly")
    with session_scope() as session:
        schedule_id = add_schedule(session, user_id=user, service="weekly", cron="* * * * *").id
    task_id = str(uuid.uuid4())
    _hold(task_id, user, "weekly", "fetch_weekly_report", lease_seconds=LONG_LEASE_S)

    with pytest.raises(ExecutionHeld):
        generate_report(
            task_id=task_id, user_id=user, service="weekly", schedule_id=schedule_id, final_attempt=True
        )
    with session_scope() as session:
        schedule = session.get(McpReportSchedule, schedule_id)
        assert schedule is not None
        assert (schedule.consecutive_failures, schedule.enabled) == (0, True)


@pytest.mark.usefixtures("worker_proc")
def test_a_report_for_a_missing_service_leaves_an_error_row(user: str) -> None:
    task_id = submit_report(user, "no-such-service", period="2026-W47").id

    def final() -> dict[str, Any] | None:
        with session_scope() as session:
            row = audit.get(session, task_id)
            return audit.as_dict(row) if row is not None and row.status != "running" else None

    row = wait_until(final, ROW_TIMEOUT_S, f"the execution row of report {task_id}", interval=0.1)
    assert row["status"] == "error"
    assert row["error_message"].startswith("ServiceNotFound: no MCP service 'no-such-service'")
    assert (row["user_id"], row["service"], row["attempts"]) == (user, "no-such-service", 1)


@pytest.mark.usefixtures("worker_proc")
def test_a_held_report_delivery_is_deferred_not_retried(user: str, worker_proc: Any) -> None:
    _service(user, "weekly")
    task_id = str(uuid.uuid4())
    _hold(task_id, user, "weekly", "fetch_weekly_report", lease_seconds=LONG_LEASE_S)

    result = submit_report(user, "weekly", period="2026-W47", task_id=task_id)
    wait_until(
        lambda: (
            f"execution {_row_id(task_id)} is held by another delivery" in worker_proc.log()
            and "deferring this delivery" in worker_proc.log()
        ),
        ROW_TIMEOUT_S,
        f"the worker deferring report {task_id}",
    )
    # A retry would have stored RETRY (and burnt an attempt); a deferral stores no outcome.
    assert result.state in ("PENDING", "STARTED")
    with session_scope() as session:
        row = audit.get(session, task_id)
        assert row is not None and (row.status, row.attempts) == ("running", 1)


def _row_id(task_id: str) -> int | None:
    with session_scope() as session:
        row = audit.get(session, task_id)
        return row.id if row is not None else None


def test_the_known_secrets_are_bounded_and_the_newest_are_kept() -> None:
    first = f"first-{uuid.uuid4().hex}"
    register_secrets([first])
    batch = [f"secret-{i}-{uuid.uuid4().hex}" for i in range(MAX_KNOWN_SECRETS + 10)]
    for secret in batch:
        register_secrets([secret])

    from worker import redaction

    assert len(redaction._known) == MAX_KNOWN_SECRETS
    # The oldest is forgotten, the newest are still masked; a secret passed explicitly always is.
    assert redact(f"x {first} y") == f"x {first} y"
    assert redact(f"x {batch[-1]} y") == f"x {MASK} y"
    assert redact(f"x {first} y", [first]) == f"x {MASK} y"


def test_registering_a_known_secret_again_keeps_it() -> None:
    kept = f"kept-{uuid.uuid4().hex}"
    register_secrets([kept])
    for i in range(MAX_KNOWN_SECRETS * 2):
        register_secrets([f"other-{i}-{uuid.uuid4().hex}", kept])
    assert redact(kept) == MASK
