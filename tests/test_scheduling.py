"""Schedules in the database: dispatch with a set clock, double dispatch, catch-up, auto-disable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from testenv import DEMO_HTTP_TOKEN

from worker.db.engine import session_scope
from worker.db.models import McpReport, McpReportSchedule
from worker.errors import InvalidArguments, ServiceNotFound
from worker.reports.job import generate_report
from worker.scheduling.schedules import Dispatch, _claim, add_schedule, dispatch_due, set_enabled
from worker.services.store import save_service

pytestmark = pytest.mark.usefixtures("clean_db")

MONDAY_0800 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


class Recorder:
    """Collects what dispatch_due would enqueue."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], Dispatch]] = []

    def __call__(self, fields: dict[str, Any], dispatch: Dispatch) -> None:
        self.sent.append((fields, dispatch))


def make_schedule(created: datetime, **kwargs: Any) -> int:
    with session_scope() as session:
        return add_schedule(session, user_id="sam", service="reports", now=created, **kwargs).id


def test_a_due_schedule_is_dispatched_once_for_the_right_week() -> None:
    schedule_id = make_schedule(MONDAY_0800 - timedelta(days=3))
    recorder = Recorder()
    assert dispatch_due(now=MONDAY_0800 - timedelta(minutes=1), send=recorder) == []
    sent = dispatch_due(now=MONDAY_0800 + timedelta(seconds=20), send=recorder)
    assert [d.period for d in sent] == ["2026-W47"]
    assert sent[0].task_id == f"schedule-{schedule_id}-20261123T080000Z"
    assert recorder.sent[0][0] == {"user_id": "sam", "service": "reports", "template": None, "refine": False}
    # The next ticks (and a second beat with the same clock) find nothing more to do.
    assert dispatch_due(now=MONDAY_0800 + timedelta(seconds=40), send=recorder) == []
    assert dispatch_due(now=MONDAY_0800 + timedelta(days=6), send=recorder) == []
    assert [d.period for d in dispatch_due(now=MONDAY_0800 + timedelta(days=7), send=recorder)] == [
        "2026-W48"
    ]


def test_two_beats_claiming_the_same_slot_dispatch_it_once() -> None:
    make_schedule(MONDAY_0800 - timedelta(days=1))
    recorder = Recorder()
    # Two ticks read the same due row; the conditional claim lets only one through.
    with session_scope() as session:
        stale = session.scalars(sa.select(McpReportSchedule)).one()
        session.expunge(stale)
    first = dispatch_due(now=MONDAY_0800, send=recorder)

    with session_scope() as session:
        session.add(stale)  # what the slower beat read before the first one committed
        assert stale.last_slot is None
        assert _claim(session, stale, MONDAY_0800) is None
        session.rollback()
    assert len(first) == 1 and len(recorder.sent) == 1


def test_a_three_week_outage_gives_one_catch_up_for_the_latest_slot() -> None:
    make_schedule(MONDAY_0800 - timedelta(days=1))
    recorder = Recorder()
    assert len(dispatch_due(now=MONDAY_0800, send=recorder)) == 1
    back = MONDAY_0800 + timedelta(weeks=3, hours=5)
    sent = dispatch_due(now=back, send=recorder)
    assert [d.period for d in sent] == ["2026-W50"]
    assert dispatch_due(now=back + timedelta(minutes=1), send=recorder) == []


def test_no_run_for_a_slot_before_the_schedule_existed() -> None:
    make_schedule(MONDAY_0800 + timedelta(minutes=1))
    assert dispatch_due(now=MONDAY_0800 + timedelta(days=3), send=Recorder()) == []


def test_a_failed_enqueue_releases_the_slot_for_the_next_tick() -> None:
    make_schedule(MONDAY_0800 - timedelta(days=1))

    def broker_down(fields: dict[str, Any], dispatch: Dispatch) -> None:
        raise ConnectionError("broker unreachable")

    assert dispatch_due(now=MONDAY_0800, send=broker_down) == []
    recorder = Recorder()
    assert [d.period for d in dispatch_due(now=MONDAY_0800 + timedelta(minutes=1), send=recorder)] == [
        "2026-W47"
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 8 * * 1"}, "minute"),
        ({"cron": "0 8 * *"}, "5"),
        ({"timezone": "Mars/Olympus"}, "time zone"),
    ],
)
def test_bad_cron_or_zone_is_rejected_when_saved(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArguments, match=message):
        make_schedule(MONDAY_0800, **kwargs)
    with session_scope() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(McpReportSchedule)) == 0


def test_n_failures_in_a_row_disable_the_schedule_and_a_success_resets(demo_http: str) -> None:
    user = f"sched-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        schedule_id = add_schedule(session, user_id=user, service="weekly", now=MONDAY_0800).id
    for attempt in range(4):
        with pytest.raises(ServiceNotFound):
            generate_report(
                task_id=f"f{attempt}-{user}",
                user_id=user,
                service="weekly",
                schedule_id=schedule_id,
                period="2026-W40",
                final_attempt=True,
            )
    with session_scope() as session:
        schedule = session.get(McpReportSchedule, schedule_id)
        assert schedule is not None and schedule.enabled and schedule.consecutive_failures == 4
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "weekly",
                "interaction_mode": "http",
                "url": demo_http,
                "api_key": DEMO_HTTP_TOKEN,
                "params": {"project_id": 1},
            },
        )
    generate_report(
        task_id=f"ok-{user}",
        user_id=user,
        service="weekly",
        schedule_id=schedule_id,
        period="2026-W41",
        final_attempt=True,
    )
    with session_scope() as session:
        schedule = session.get(McpReportSchedule, schedule_id)
        assert schedule is not None and schedule.consecutive_failures == 0
        session.execute(sa.delete(McpReport))
    with session_scope() as session:
        session.execute(sa.text("DELETE FROM mcp_services WHERE user_id = :u"), {"u": user})
    for attempt in range(5):
        with pytest.raises(ServiceNotFound):
            generate_report(
                task_id=f"g{attempt}-{user}",
                user_id=user,
                service="weekly",
                schedule_id=schedule_id,
                period="2026-W42",
                final_attempt=True,
            )
    with session_scope() as session:
        schedule = session.get(McpReportSchedule, schedule_id)
        assert schedule is not None and not schedule.enabled
        assert "disabled after 5 consecutive failures" in (schedule.disabled_reason or "")
        assert "ServiceNotFound" in (schedule.disabled_reason or "") or "no MCP service" in (
            schedule.disabled_reason or ""
        )
    with session_scope() as session:
        set_enabled(session, schedule_id, True, now=MONDAY_0800)
    with session_scope() as session:
        schedule = session.get(McpReportSchedule, schedule_id)
        assert schedule is not None and schedule.enabled and schedule.consecutive_failures == 0
        assert schedule.disabled_reason is None
