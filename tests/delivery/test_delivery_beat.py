"""The whole path: a schedule saved by the CLI with one email address and one signed webhook, two
real beat processes and one worker: one email and one webhook for the slot, rows `delivered`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from delivery_helpers import SECRET_KEY, WEBHOOK_SECRET, DeliveryWorker
from fakes.smtp_server import SmtpServer
from fakes.webhook_receiver import WebhookReceiver
from processes import spawn, wait_until
from testenv import DATA_DIR, DEMO_HTTP_TOKEN, LOG_DIR

from worker.db.engine import session_scope
from worker.db.models import McpReport, McpReportDelivery, McpReportSchedule
from worker.delivery.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from worker.services.crypto import decrypt
from worker.services.store import save_service

# The first slot is the next minute boundary; its report and deliveries follow within seconds.
FIRST_SLOT_TIMEOUT_S = 150.0


def cli(worker: DeliveryWorker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker.env,
    )


@pytest.mark.usefixtures("clean_db")
def test_two_beats_and_one_worker_send_one_email_and_one_webhook_per_slot(
    delivery_worker: DeliveryWorker, smtp: SmtpServer, hooks: WebhookReceiver, demo_http: str, tmp_path: Path
) -> None:
    user = f"beat-{uuid.uuid4().hex[:6]}"
    path = f"/beat-{uuid.uuid4().hex[:6]}"
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
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(WEBHOOK_SECRET + "\n", encoding="utf-8")
    added = cli(
        delivery_worker,
        "schedules", "add", user, "weekly", "--cron", "* * * * *",
        "--email", "team@example.com", "--webhook", hooks.url(path), "--webhook-secret-file", str(secret_file),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    schedule_id = json.loads(added.stdout)["id"]
    with session_scope() as session:
        schedule = session.get(McpReportSchedule, schedule_id)
        assert schedule is not None
        [webhook] = [c for c in schedule.channels if c["type"] == "webhook"]
        assert (
            webhook["secret"].startswith("fernet:")
            and decrypt(webhook["secret"], SECRET_KEY) == WEBHOOK_SECRET
        )

    def beat_argv(n: int) -> list[str]:
        state = DATA_DIR / f"delivery-beat-{n}-{uuid.uuid4().hex[:4]}"
        argv = [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO"]
        return [*argv, "-s", str(state), "--pidfile", f"{state}.pid"]

    beats = [spawn(f"delivery-beat-{n}", beat_argv(n), delivery_worker.env, LOG_DIR) for n in (1, 2)]
    try:

        def settled() -> list[McpReportDelivery] | None:
            with session_scope() as session:
                rows = session.scalars(
                    sa.select(McpReportDelivery)
                    .join(McpReport, McpReport.id == McpReportDelivery.report_id)
                    .where(McpReport.schedule_id == schedule_id)
                ).all()
                done = [r for r in rows if r.status in ("delivered", "failed")]
                for row in done:
                    session.expunge(row)
            return done if len(done) == 2 else None

        rows = wait_until(settled, FIRST_SLOT_TIMEOUT_S, "the first slot's two deliveries", interval=0.5)
    finally:
        for beat in beats:
            beat.stop()
    time.sleep(1.0)  # a duplicate dispatch or delivery already on its way has had its chance

    assert sorted(r.status for r in rows) == ["delivered", "delivered"], [r.last_error for r in rows]
    [message] = smtp.messages
    assert message["To"] == "team@example.com"
    with session_scope() as session:
        report = session.scalars(sa.select(McpReport).where(McpReport.schedule_id == schedule_id)).one()
        subject = f"Website Relaunch Weekly Report ({report.period})"
    assert message["Subject"] == subject, message["Subject"]
    assert {part.get_content_type() for part in message.iter_parts()} == {"text/plain", "text/html"}
    [received] = hooks.received(path)
    assert verify(
        WEBHOOK_SECRET, received.body, received.headers[TIMESTAMP_HEADER], received.headers[SIGNATURE_HEADER]
    )
    assert json.loads(received.body)["report"]["schedule_id"] == schedule_id

    shown = cli(delivery_worker, "schedules", "show", str(schedule_id))
    assert shown.returncode == 0 and "team@example.com" in shown.stdout and path in shown.stdout
    listed = cli(delivery_worker, "reports", "deliveries", str(report.id), "--json")
    assert [r["status"] for r in json.loads(listed.stdout)] == ["delivered", "delivered"]

    # A one-off report with --deliver goes through the same channels.
    one_off = cli(delivery_worker, "report", user, "weekly", "--period", "2026-W40", "--deliver", "--wait")
    assert one_off.returncode == 0, one_off.stderr
    smtp.wait_for(2)
    hooks.wait_for(path, 2)
    with session_scope() as session:
        [other] = session.scalars(
            sa.select(McpReport.id).where(McpReport.user_id == user, McpReport.period == "2026-W40")
        ).all()
    assert smtp.messages[1]["Subject"] == "Website Relaunch Weekly Report (2026-W40)"
    assert json.loads(hooks.received(path)[1].body)["report"]["id"] == other
    for out in (added, shown, listed, one_off):
        assert WEBHOOK_SECRET not in out.stdout + out.stderr
