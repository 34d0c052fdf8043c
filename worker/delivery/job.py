"""Sending one delivery: the logic behind `mcp.deliver_report`, testable without Celery.

`schedule_deliveries` (called by the report job once the report row is committed) adds a log row
per channel and enqueues one `mcp.deliver_report` per row still to send. `deliver` claims the
row, sends through its channel, and records the outcome; a transient failure leaves the row
`retrying` for the task's next attempt, or `failed` on the last one. The report row is only read.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from worker import names
from worker.db.engine import session_scope
from worker.db.models import McpReport, McpReportSchedule
from worker.delivery import channels as ch
from worker.delivery import log
from worker.delivery.email import build_message, message_domain, send_email, smtp_config
from worker.delivery.errors import DeliveryRefused, DeliveryUnavailable
from worker.delivery.http import post_slack, post_webhook, slack_payload
from worker.delivery.limits import lease_seconds
from worker.errors import InvalidArguments, WorkerError
from worker.redaction import redact, register_secrets
from worker.reports.html import markdown_to_html, report_page
from worker.reports.storage import report_as_dict
from worker.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_HEADING = re.compile(r"^\s*#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def retry_delay(retries: int, retry_after: float | None, settings: Settings) -> float:
    """Seconds before the next attempt: exponential from MCP_DELIVERY_RETRY_BACKOFF_S, capped, or
    the receiver's Retry-After when it gave one (within the same cap)."""
    cap = settings.delivery_retry_backoff_max
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return min(settings.delivery_retry_backoff * (2**retries), cap)


@dataclass(frozen=True)
class DeliveryResult:
    delivery_id: int
    status: str
    channel: str | None
    target: str | None
    code: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "status": self.status,
            "channel": self.channel,
            "target": self.target,
            "response_code": self.code,
        }


def channels_for(schedule_ids: Iterable[int]) -> list[dict[str, Any]]:
    """The stored channels of these schedules (each channel once)."""
    ids = list(schedule_ids)
    if not ids:
        return []
    with session_scope() as session:
        rows = session.scalars(sa.select(McpReportSchedule.channels).where(McpReportSchedule.id.in_(ids)))
        found: dict[str, dict[str, Any]] = {}
        for items in rows:
            for item in items or []:
                if isinstance(item, Mapping) and isinstance(item.get("key"), str):
                    found.setdefault(item["key"], dict(item))
    return list(found.values())


def user_channels(user: str, service: str) -> list[int]:
    """The ids of the user's schedules of `service` that have channels (for `report --deliver`)."""
    with session_scope() as session:
        rows = session.execute(
            sa.select(McpReportSchedule.id, McpReportSchedule.channels).where(
                McpReportSchedule.user_id == user, McpReportSchedule.service == service
            )
        ).all()
    return [r.id for r in rows if r.channels]


def schedule_deliveries(report_id: int, items: list[dict[str, Any]], send: bool = True) -> list[int]:
    """Log one delivery per channel of `report_id` (once) and enqueue those still to send.

    Called after the report row is committed; safe to call again (a retried report task).
    """
    if not items:
        return []
    targets = {}
    for item in items:
        try:
            targets[str(item["key"])] = ch.loaded(item).target
        except InvalidArguments:
            targets[str(item["key"])] = str(item.get("type"))
    with session_scope() as session:
        ids = log.add_deliveries(session, report_id, items, targets)
    if send:
        for delivery_id in ids:
            enqueue(delivery_id)
    return ids


def enqueue(delivery_id: int) -> str:
    """Send `mcp.deliver_report` for one delivery row; the task id names the row (for Flower)."""
    from worker.celery import app

    task_id = f"delivery-{delivery_id}-{uuid.uuid4().hex[:8]}"
    app.send_task(
        names.DELIVER_REPORT, kwargs={"delivery_id": delivery_id}, task_id=task_id, queue=names.REPORTS_QUEUE
    )
    logger.info("delivery %s queued as %s", delivery_id, task_id)
    return task_id


def message_id(report_id: int, channel_key: str, sender: str) -> str:
    """The Message-ID of one report sent to one address: the same on every attempt."""
    digest = hashlib.sha256(channel_key.encode()).hexdigest()[:16]
    return f"<report-{report_id}.{digest}@{message_domain(sender)}>"


def subject_of(report: McpReport) -> str:
    match = _HEADING.search(report.content)
    title = match.group(1).strip() if match else f"{report.service} report"
    return f"{title} ({report.period})" if report.period not in title else title


def deliver(
    *, task_id: str, delivery_id: object, final_attempt: bool, settings: Settings | None = None
) -> DeliveryResult:
    """Send one delivery (once): claim, send, record.

    Raises:
        InvalidArguments: `delivery_id` is not a delivery's id.
        ExecutionHeld: another delivery of the task is sending it now.
        DeliveryUnavailable: a transient failure on an attempt that is not the last (the row
            says `retrying`).
        DeliveryRefused / ConfigurationError: a permanent failure (the row says `failed`).
    """
    settings = settings or get_settings()
    if not isinstance(delivery_id, int) or isinstance(delivery_id, bool):
        raise InvalidArguments(f"delivery_id must be an integer, got {type(delivery_id).__name__}")
    claimed = log.claim(delivery_id, task_id, lease_seconds(settings))
    if claimed is None:
        logger.info("delivery %s has nothing left to send", delivery_id)
        with session_scope() as session:
            status = session.scalar(
                sa.select(log.McpReportDelivery.status).where(log.McpReportDelivery.id == delivery_id)
            )
        return DeliveryResult(delivery_id, str(status), None, None)
    code = _attempt(claimed, task_id, final_attempt, settings)
    logger.info("delivery %s of report %s sent to %s", delivery_id, claimed.report_id, claimed.target)
    return DeliveryResult(delivery_id, log.Status.DELIVERED.value, claimed.channel, claimed.target, code)


def _attempt(claimed: log.Claimed, task_id: str, final_attempt: bool, settings: Settings) -> int | None:
    """Send a claimed delivery and record how it went on its row; the receiver's code."""
    secrets: list[str] = []
    try:
        channel = ch.loaded(claimed.config)
        secrets = channel.secrets()
        if channel.type == "email" and settings.smtp_url:
            password = smtp_config(settings).password
            secrets += [password] if password else []
        register_secrets(secrets)
        code, mid = _send(claimed, channel, settings)
    except DeliveryUnavailable as exc:
        error = redact(str(exc), secrets)
        if final_attempt:
            error = f"gave up after {claimed.attempts} attempts: {error}"
            log.finish(claimed.id, task_id, log.Status.FAILED, error=error, code=exc.code)
            logger.warning("delivery %s to %s failed for good: %s", claimed.id, claimed.target, error)
            raise DeliveryRefused(error, code=exc.code) from None
        log.finish(claimed.id, task_id, log.Status.RETRYING, error=error, code=exc.code)
        logger.info("delivery %s to %s will be retried: %s", claimed.id, claimed.target, error)
        raise DeliveryUnavailable(error, retry_after=exc.retry_after, code=exc.code) from None
    except WorkerError as exc:
        error = redact(f"{type(exc).__name__}: {exc}", secrets)
        log.finish(claimed.id, task_id, log.Status.FAILED, error=error, code=getattr(exc, "code", None))
        logger.warning("delivery %s to %s failed: %s", claimed.id, claimed.target, error)
        raise
    except Exception as exc:
        # not a failure we know how to retry: fail the row (`reports deliver` resends) and let
        # the task fail with it, rather than leave the row `sending` until its lease runs out
        error = redact(f"{type(exc).__name__}: {exc}", secrets)
        log.finish(claimed.id, task_id, log.Status.FAILED, error=error)
        logger.exception("delivery %s to %s failed unexpectedly", claimed.id, claimed.target)
        raise DeliveryRefused(error) from None
    if not log.finish(claimed.id, task_id, log.Status.DELIVERED, code=code, message_id=mid):
        logger.warning("delivery %s was sent but its claim had been taken over meanwhile", claimed.id)
    return code


def _send(claimed: log.Claimed, channel: ch.Channel, settings: Settings) -> tuple[int | None, str | None]:
    with session_scope() as session:
        report = session.get(McpReport, claimed.report_id)
        if report is None:
            raise DeliveryRefused(f"report {claimed.report_id} no longer exists")
        data = report_as_dict(report)
        subject = subject_of(report)
        content = report.content
    if channel.type == "email":
        config = smtp_config(settings)
        sender = str(settings.smtp_from)
        mid = message_id(claimed.report_id, claimed.channel_key, sender)
        message = build_message(
            sender=sender,
            to=str(channel.to),
            subject=subject,
            text=content,
            html=report_page(content, subject),
            message_id=mid,
        )
        send_email(message, config, settings.smtp_timeout, settings.smtp_ca_file)
        return 250, mid
    if channel.type == "slack":
        payload = slack_payload(subject, content, f"mcp-worker reports show {claimed.report_id}")
        return post_slack(str(channel.url), payload, settings.webhook_timeout), None
    body = {
        "event": "report",
        "delivery_id": claimed.id,
        "report": {**data, "subject": subject, "html": markdown_to_html(content)},
    }
    return post_webhook(
        str(channel.url), body, str(channel.secret), claimed.id, settings.webhook_timeout
    ), None
