"""Helpers of the delivery tests: the worker's settings and secrets, a producer on the worker's
own broker, and report and delivery rows as the report job writes them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from celery import Celery
from cryptography.fernet import Fernet
from processes import Proc

from worker import names
from worker.db.engine import session_scope
from worker.db.models import McpReport, McpReportDelivery
from worker.delivery import channels as ch
from worker.delivery.job import schedule_deliveries
from worker.processes import wait_until
from worker.reports.storage import insert_report

SMTP_USER = "reports-bot"
SMTP_PASSWORD = "smtp-pass-Zq81-never-logged"
WEBHOOK_SECRET = "whsec-7f3a9c1e5b2d4680-never-logged"
SECRET_KEY = Fernet.generate_key().decode()
SENDER = "reports@mcp-worker.test"
# Short enough that a test of retries settles in seconds: 0.2 s, 0.4 s, capped at 1 s.
DELIVERY_SETTINGS = {
    "MCP_DELIVERY_MAX_RETRIES": "2",
    "MCP_DELIVERY_RETRY_BACKOFF_S": "0.2",
    "MCP_DELIVERY_RETRY_BACKOFF_MAX_S": "1",
    "MCP_SMTP_TIMEOUT": "5",
    "MCP_WEBHOOK_TIMEOUT": "5",
}
FINAL = ("delivered", "failed")


@dataclass
class DeliveryWorker:
    proc: Proc
    env: dict[str, str]
    broker: str
    smtp_port: int
    app: Celery

    def send(self, delivery_id: int, task_id: str | None = None) -> str:
        task_id = task_id or f"test-delivery-{delivery_id}-{uuid.uuid4().hex[:6]}"
        self.app.send_task(
            names.DELIVER_REPORT,
            kwargs={"delivery_id": delivery_id},
            task_id=task_id,
            queue=names.REPORTS_QUEUE,
        )
        return task_id


def stored_report(user: str = "dana", content: str | None = None, period: str = "2026-W47") -> int:
    """A report row as the report job stores it (what a delivery reads)."""
    text = content or f"# Demo Weekly Report\n\n**Week**: {period}\n\n- #1 Ship it (In progress)\n"
    with session_scope() as session:
        return insert_report(
            session,
            {
                "task_id": f"report-{uuid.uuid4().hex}",
                "user_id": user,
                "service": "weekly",
                "template": "weekly_report.j2",
                "period": period,
                "content": text,
                "raw_content": text,
                "refined": False,
                "undefined_names": [],
            },
        )


def log_deliveries(report_id: int, channels: list[ch.Channel]) -> list[int]:
    """The report's delivery rows, as the report job logs them (channels stored encrypted)."""
    return schedule_deliveries(report_id, ch.stored(channels, keys=SECRET_KEY), send=False)


def delivery(delivery_id: int) -> McpReportDelivery:
    with session_scope() as session:
        row = session.get(McpReportDelivery, delivery_id)
        assert row is not None
        session.expunge(row)
        return row


def wait_settled(delivery_id: int, timeout: float = 30.0) -> McpReportDelivery:
    def settled() -> McpReportDelivery | None:
        row = delivery(delivery_id)
        return row if row.status in FINAL else None

    return wait_until(settled, timeout, f"delivery {delivery_id} to settle", interval=0.1)


def report_row(report_id: int) -> dict[str, Any]:
    with session_scope() as session:
        row = (
            session.execute(sa.select(McpReport.__table__).where(McpReport.id == report_id)).mappings().one()
        )
        return dict(row)
