"""Deliveries through a real worker to a real SMTP server and HTTP receiver on loopback: once per
report and channel whatever the broker does, retries for transient failures, none for permanent
ones, and a failed delivery that `reports deliver ID` sends once SMTP is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
from delivery_helpers import (
    SENDER,
    SMTP_PASSWORD,
    SMTP_USER,
    WEBHOOK_SECRET,
    DeliveryWorker,
    delivery,
    log_deliveries,
    report_row,
    stored_report,
    wait_settled,
)
from fakes.smtp_server import SmtpServer
from fakes.webhook_receiver import WebhookReceiver

from worker.delivery import channels as ch
from worker.delivery.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

pytestmark = pytest.mark.usefixtures("clean_db")


def cli(worker: DeliveryWorker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker.env,
    )


def test_email_and_webhook_are_sent_once_when_each_task_is_delivered_twice(
    delivery_worker: DeliveryWorker, smtp: SmtpServer, hooks: WebhookReceiver
) -> None:
    path = f"/twice-{uuid.uuid4().hex[:6]}"
    report_id = stored_report()
    email_id, hook_id = log_deliveries(
        report_id, [ch.email_channel("ops@example.com"), ch.webhook_channel(hooks.url(path), WEBHOOK_SECRET)]
    )
    for delivery_id in (email_id, hook_id):
        delivery_worker.send(delivery_id)
        delivery_worker.send(delivery_id)  # the broker handing the task out twice
    assert wait_settled(email_id).status == "delivered"
    assert wait_settled(hook_id).status == "delivered"

    [message] = smtp.wait_for(1)
    assert message["To"] == "ops@example.com" and message["From"] == SENDER
    assert message["Subject"] == "Demo Weekly Report (2026-W47)"
    assert message["Message-ID"] == delivery(email_id).message_id
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and "#1 Ship it (In progress)" in text.get_content()
    assert html is not None and "<h1>Demo Weekly Report</h1>" in html.get_content()

    [received] = hooks.wait_for(path, 1)
    assert verify(
        WEBHOOK_SECRET, received.body, received.headers[TIMESTAMP_HEADER], received.headers[SIGNATURE_HEADER]
    )
    assert not verify(
        "another-secret-entirely",
        received.body,
        received.headers[TIMESTAMP_HEADER],
        received.headers[SIGNATURE_HEADER],
    )
    body = json.loads(received.body)
    assert body["report"]["id"] == report_id and body["report"]["period"] == "2026-W47"
    assert "<h1>Demo Weekly Report</h1>" in body["report"]["html"]
    assert delivery(email_id).attempts == 1 and delivery(hook_id).attempts == 1
    assert delivery(hook_id).response_code == 200
    time.sleep(1.0)  # a duplicate that would send again has had its chance
    assert len(smtp.messages) == 1 and len(hooks.received(path)) == 1


def test_a_worker_killed_inside_the_smtp_conversation_still_sends_one_email(
    delivery_worker: DeliveryWorker, smtp: SmtpServer
) -> None:
    report_id = stored_report()
    [email_id] = log_deliveries(report_id, [ch.email_channel("kill@example.com")])
    smtp.hold_next_rcpt()
    delivery_worker.send(email_id)
    assert smtp.holding.wait(30), "the worker never reached RCPT TO"
    for child in psutil.Process(delivery_worker.proc.popen.pid).children():
        os.kill(child.pid, signal.SIGKILL)  # the pool processes: the sender dies before DATA
    smtp.release()
    row = wait_settled(email_id, timeout=60)
    assert row.status == "delivered" and row.attempts == 2
    [message] = smtp.wait_for(1)
    assert message["To"] == "kill@example.com"
    assert message["Message-ID"] == row.message_id


def test_smtp_down_fails_after_retries_and_reports_deliver_sends_it_when_back(
    delivery_worker: DeliveryWorker,
) -> None:
    report_id = stored_report(content="# Outage report\n\nNothing lost.\n")
    before = report_row(report_id)
    [email_id] = log_deliveries(report_id, [ch.email_channel("later@example.com")])
    delivery_worker.send(email_id)
    row = wait_settled(email_id)
    assert row.status == "failed" and row.attempts == 3  # the first try and MCP_DELIVERY_MAX_RETRIES=2
    assert row.last_error and "gave up after 3 attempts" in row.last_error and "unreachable" in row.last_error
    assert report_row(report_id) == before  # the stored report is untouched

    shown = cli(delivery_worker, "reports", "deliveries", str(report_id))
    assert shown.returncode == 0 and "failed" in shown.stdout and "later@example.com" in shown.stdout
    with SmtpServer(delivery_worker.smtp_port, auth=(SMTP_USER, SMTP_PASSWORD)) as smtp:
        resent = cli(delivery_worker, "reports", "deliver", str(report_id))
        assert resent.returncode == 0, resent.stderr
        assert json.loads(resent.stdout)["queued"][0]["delivery_id"] == email_id
        row = wait_settled(email_id)
        assert row.status == "delivered", row.last_error
        [message] = smtp.wait_for(1)
        assert message["Subject"] == "Outage report (2026-W47)"
    again = cli(delivery_worker, "reports", "deliver", str(report_id))
    assert again.returncode == 0 and "nothing to send again" in again.stdout


def test_webhook_500_then_200_is_delivered_on_a_retry_and_404_fails_at_once(
    delivery_worker: DeliveryWorker, hooks: WebhookReceiver
) -> None:
    flaky, missing, busy = (f"/{name}-{uuid.uuid4().hex[:6]}" for name in ("flaky", "missing", "busy"))
    hooks.script(flaky, [500, 200])
    hooks.script(missing, [404])
    hooks.script(busy, [(429, {"Retry-After": "1"}), 200])
    report_id = stored_report()
    ids = log_deliveries(
        report_id, [ch.webhook_channel(hooks.url(path), WEBHOOK_SECRET) for path in (flaky, missing, busy)]
    )
    for delivery_id in ids:
        delivery_worker.send(delivery_id)
    flaky_row, missing_row, busy_row = (wait_settled(i) for i in ids)
    assert (flaky_row.status, flaky_row.attempts, flaky_row.response_code) == ("delivered", 2, 200)
    assert (busy_row.status, busy_row.attempts) == ("delivered", 2)
    assert (missing_row.status, missing_row.attempts, missing_row.response_code) == ("failed", 1, 404)
    assert missing_row.last_error and "HTTP 404" in missing_row.last_error
    assert len(hooks.received(missing)) == 1 and len(hooks.received(flaky)) == 2


def test_a_refused_recipient_fails_at_once_and_slack_gets_the_summary(
    delivery_worker: DeliveryWorker, smtp: SmtpServer, hooks: WebhookReceiver
) -> None:
    slack = f"/services/T000/B000/{uuid.uuid4().hex}"
    smtp.refuse("nobody@example.com")
    report_id = stored_report()
    email_id, slack_id = log_deliveries(
        report_id, [ch.email_channel("nobody@example.com"), ch.slack_channel(hooks.url(slack))]
    )
    delivery_worker.send(email_id)
    delivery_worker.send(slack_id)
    refused = wait_settled(email_id)
    assert (refused.status, refused.attempts) == ("failed", 1)
    assert refused.last_error and "550" in refused.last_error
    assert wait_settled(slack_id).status == "delivered"
    [posted] = hooks.wait_for(slack, 1)
    text = json.loads(posted.body)["text"]
    assert text.startswith("*Demo Weekly Report (2026-W47)*") and "Ship it" in text
    assert slack not in delivery(slack_id).target  # the URL's token stays out of the log
