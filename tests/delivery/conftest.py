"""Fixtures of the delivery tests: one real worker on a Redis database of its own (so the session
worker never takes its tasks), told to send mail to an SMTP server on a port the tests choose
(started and stopped per test: "SMTP down" is simply no server there), and an HTTP receiver for
Slack and webhooks. Retry backoffs are short so failures settle within seconds."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from delivery_helpers import (
    DELIVERY_SETTINGS,
    SECRET_KEY,
    SENDER,
    SMTP_PASSWORD,
    SMTP_USER,
    DeliveryWorker,
)
from fakes.smtp_server import SmtpServer
from fakes.webhook_receiver import WebhookReceiver
from processes import producer_app, start_worker
from testenv import LOG_DIR, extra_redis_url

from worker import names
from worker.processes import free_port


@pytest.fixture(scope="session")
def delivery_worker() -> Iterator[DeliveryWorker]:
    broker = extra_redis_url()
    port = free_port()
    env = dict(os.environ)
    env.update(
        CELERY_BROKER_URL=broker,
        CELERY_RESULT_BACKEND=broker,
        MCP_SMTP_URL=f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}",
        MCP_SMTP_FROM=SENDER,
        MCP_SECRET_KEY=SECRET_KEY,
        **DELIVERY_SETTINGS,
    )
    proc = start_worker(
        f"delivery-{uuid.uuid4().hex[:6]}",
        LOG_DIR,
        env,
        queues=f"{names.REPORTS_QUEUE},{names.SCHEDULE_QUEUE},{names.TOOLS_QUEUE}",
    )
    app = producer_app(broker, "delivery-tests")
    yield DeliveryWorker(proc, env, broker, port, app)
    app.close()
    proc.stop()


@pytest.fixture
def smtp(delivery_worker: DeliveryWorker) -> Iterator[SmtpServer]:
    """The SMTP server the delivery worker sends to, up for this test."""
    with SmtpServer(delivery_worker.smtp_port, auth=(SMTP_USER, SMTP_PASSWORD)) as server:
        yield server


@pytest.fixture(scope="session")
def hooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver
