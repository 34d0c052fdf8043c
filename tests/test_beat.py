"""Celery beat end to end: real beat processes and a real worker fire a per-user schedule."""

from __future__ import annotations

import re
import sys
import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from processes import spawn, wait_until
from testenv import DATA_DIR, DEMO_HTTP_TOKEN, LOG_DIR

from worker.db.engine import session_scope
from worker.db.models import McpExecution, McpReport
from worker.scheduling.cron import period_for_slot
from worker.scheduling.schedules import add_schedule
from worker.services.store import save_service

# Three minute boundaries; each slot must be dispatched exactly once although two beats tick.
SLOTS_TO_WATCH = 3


def test_two_beats_and_a_worker_fire_each_slot_once(
    demo_http: str, worker_proc: object, clean_db: None
) -> None:
    user = f"beat-{uuid.uuid4().hex[:6]}"
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
        schedule_id = add_schedule(session, user_id=user, service="weekly", cron="* * * * *").id
    created = datetime.now(UTC)

    beats = [
        spawn(
            f"beat-{n}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "beat",
                "--loglevel",
                "INFO",
                "-s",
                str(DATA_DIR / f"beat-{n}-{uuid.uuid4().hex[:4]}"),
                "--pidfile",
                str(DATA_DIR / f"beat-{n}.pid"),
            ],
            __import__("os").environ,
            LOG_DIR,
        )
        for n in (1, 2)
    ]
    try:

        def first_report() -> McpReport | None:
            with session_scope() as session:
                return session.scalars(
                    sa.select(McpReport).where(McpReport.schedule_id == schedule_id)
                ).first()

        # The first slot is the next minute boundary; its report follows within the minute.
        report = wait_until(first_report, 150, "the first scheduled report", interval=0.5)
        appeared = datetime.now(UTC)
        assert (appeared - created).total_seconds() < 125

        def slots_seen() -> bool:
            with session_scope() as session:
                count = session.scalar(
                    sa.select(sa.func.count()).where(McpExecution.task_id.like(f"schedule-{schedule_id}-%"))
                )
            return (count or 0) >= SLOTS_TO_WATCH

        wait_until(slots_seen, 60 * SLOTS_TO_WATCH + 60, f"{SLOTS_TO_WATCH} scheduled slots", interval=1.0)
    finally:
        for beat in beats:
            beat.stop()
    time.sleep(2)  # let a tick already sent finish; its claim would still have to win

    with session_scope() as session:
        rows = session.execute(
            sa.select(McpExecution.task_id, McpExecution.status, McpExecution.attempts).where(
                McpExecution.task_id.like(f"schedule-{schedule_id}-%")
            )
        ).all()
        reports = session.scalars(sa.select(McpReport).where(McpReport.schedule_id == schedule_id)).all()
    assert len(rows) >= SLOTS_TO_WATCH
    assert all(r.status == "success" and r.attempts == 1 for r in rows)

    worker_log = worker_proc.log()  # type: ignore[attr-defined]
    dispatched = re.findall(rf"dispatched schedule {schedule_id} slot (\S+)", worker_log)
    assert len(dispatched) == len(set(dispatched)) == len(rows), dispatched
    # Every slot this week names the same period (the ISO week before it): one report row.
    slot = datetime.strptime(rows[0].task_id.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert [r.period for r in reports] == [period_for_slot(slot, "UTC")]
    assert report.period == period_for_slot(slot, "UTC")
