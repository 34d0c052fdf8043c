"""Per-user report schedules in the database, and the beat tick that dispatches them.

Every minute `dispatch_due` finds enabled schedules whose next run time has come, computes each
one's slot (`worker.scheduling.cron`), claims the slot with a conditional UPDATE (so two beat
processes cannot both claim it), commits, and only then enqueues `mcp.generate_report` with a
task id derived from (schedule, slot). The deterministic id and the unique (schedule, period)
constraint on `mcp_reports` make any double dispatch produce one report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker import names
from worker.db.engine import session_scope
from worker.db.models import McpReportSchedule
from worker.delivery.channels import Channel, stored
from worker.errors import InvalidArguments, WorkerError
from worker.scheduling.cron import (
    DEFAULT_CRON,
    DEFAULT_TIMEZONE,
    InvalidSchedule,
    due_slot,
    next_slot,
    parse_cron,
    parse_timezone,
    period_for_slot,
    slot_task_id,
)
from worker.settings import get_settings
from worker.validation import validate_report_request, validate_tool_request

logger = logging.getLogger(__name__)

# Schedules examined per tick; the rest wait for the next minute rather than stretch one tick.
BATCH_SIZE = 500


@dataclass(frozen=True)
class Dispatch:
    schedule_id: int
    slot: datetime
    period: str
    task_id: str


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they are stored in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def add_schedule(
    session: Session,
    *,
    user_id: str,
    service: str,
    template: str | None = None,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    refine: bool = False,
    channels: Sequence[Channel] = (),
    now: datetime | None = None,
) -> McpReportSchedule:
    """Validate and store a schedule, with the channels its reports are delivered through
    (checked when built: `worker.delivery.channels`; stored with their secrets encrypted).

    Raises:
        InvalidArguments: the cron expression, time zone or a field does not parse; nothing is stored.
    """
    validate_tool_request(
        user_id, service, "report", {}, max_argument_bytes=get_settings().max_argument_bytes
    )
    validate_report_request(template, None, refine)
    try:
        spec = parse_cron(cron)
        parse_timezone(timezone)
    except InvalidSchedule as exc:
        raise InvalidArguments(str(exc)) from None
    now = now or datetime.now(UTC)
    row = McpReportSchedule(
        user_id=user_id,
        service=service,
        template=template,
        cron=spec.expr,
        timezone=timezone,
        refine=refine,
        channels=stored(channels) or None,
        enabled=True,
        created_at=now,
        next_run_at=next_slot(spec.expr, timezone, now),
    )
    session.add(row)
    session.flush()
    return row


def _claim(session: Session, schedule: McpReportSchedule, now: datetime) -> Dispatch | None:
    created = _aware(schedule.created_at) or now
    slot = due_slot(
        schedule.cron, schedule.timezone, now=now, created_at=created, last_slot=_aware(schedule.last_slot)
    )
    following = next_slot(schedule.cron, schedule.timezone, now)
    if slot is None:
        schedule.next_run_at = following
        return None
    previous = schedule.last_slot
    claimed = session.execute(
        sa.update(McpReportSchedule)
        .where(
            McpReportSchedule.id == schedule.id,
            # Optimistic claim: only if nobody moved last_slot since we read it.
            McpReportSchedule.last_slot.is_(None)
            if previous is None
            else McpReportSchedule.last_slot == previous,
        )
        .values(last_slot=slot, next_run_at=following)
        .execution_options(synchronize_session=False)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return None  # another beat claimed it first
    return Dispatch(
        schedule.id, slot, period_for_slot(slot, schedule.timezone), slot_task_id(schedule.id, slot)
    )


def dispatch_due(
    now: datetime | None = None, send: Callable[[McpReportSchedule, Dispatch], Any] | None = None
) -> list[Dispatch]:
    """Claim and enqueue every due slot; returns what was dispatched.

    A slot whose enqueue fails is released again so the next tick retries it.
    """
    now = now or datetime.now(UTC)
    with session_scope() as session:
        due = session.scalars(
            sa.select(McpReportSchedule)
            .where(
                McpReportSchedule.enabled.is_(True),
                sa.or_(McpReportSchedule.next_run_at.is_(None), McpReportSchedule.next_run_at <= now),
            )
            .order_by(McpReportSchedule.next_run_at)
            .limit(BATCH_SIZE)
        ).all()
        claimed: list[tuple[dict[str, Any], Dispatch, datetime | None]] = []
        for schedule in due:
            previous = schedule.last_slot
            try:
                dispatch = _claim(session, schedule, now)
            except InvalidSchedule as exc:
                schedule.enabled = False
                schedule.disabled_reason = f"invalid schedule: {exc}"
                continue
            if dispatch is not None:
                fields = {
                    "user_id": schedule.user_id,
                    "service": schedule.service,
                    "template": schedule.template,
                    "refine": schedule.refine,
                }
                claimed.append((fields, dispatch, previous))
    sent = []
    for fields, dispatch, previous in claimed:
        try:
            _enqueue(fields, dispatch, send)
            sent.append(dispatch)
        except Exception:
            logger.exception(
                "could not enqueue the report of schedule %s; releasing the slot", dispatch.schedule_id
            )
            with session_scope() as session:
                session.execute(
                    sa.update(McpReportSchedule)
                    .where(
                        McpReportSchedule.id == dispatch.schedule_id,
                        McpReportSchedule.last_slot == dispatch.slot,
                    )
                    .values(last_slot=previous, next_run_at=now)
                )
    return sent


def _enqueue(fields: dict[str, Any], dispatch: Dispatch, send: Callable[..., Any] | None) -> None:
    if send is not None:
        send(fields, dispatch)
        return
    from worker.celery import app

    app.send_task(
        names.GENERATE_REPORT,
        kwargs={**fields, "period": dispatch.period, "schedule_id": dispatch.schedule_id},
        task_id=dispatch.task_id,
        queue=names.REPORTS_QUEUE,
    )
    logger.info(
        "dispatched schedule %s slot %s (%s)",
        dispatch.schedule_id,
        dispatch.slot.isoformat(),
        dispatch.period,
    )


def record_outcome(schedule_id: int, error: WorkerError | None) -> None:
    """Count a scheduled report's final outcome: success resets the failures, failure counts
    and disables the schedule after MCP_SCHEDULE_MAX_FAILURES in a row."""
    limit = get_settings().schedule_max_failures
    with session_scope() as session:
        schedule = session.get(McpReportSchedule, schedule_id, with_for_update=True)
        if schedule is None:
            return
        if error is None:
            schedule.consecutive_failures = 0
            return
        schedule.consecutive_failures += 1
        if schedule.consecutive_failures >= limit:
            schedule.enabled = False
            schedule.disabled_reason = f"disabled after {schedule.consecutive_failures} consecutive failures; last: {str(error)[:300]}"
            logger.warning("schedule %s disabled: %s", schedule_id, schedule.disabled_reason)


def set_enabled(
    session: Session, schedule_id: int, enabled: bool, now: datetime | None = None
) -> McpReportSchedule:
    """Enable or disable a schedule; enabling clears the failure count and the reason.

    Raises:
        InvalidArguments: no schedule with that id.
    """
    schedule = session.get(McpReportSchedule, schedule_id)
    if schedule is None:
        raise InvalidArguments(f"no schedule with id {schedule_id}")
    schedule.enabled = enabled
    if enabled:
        schedule.consecutive_failures = 0
        schedule.disabled_reason = None
        schedule.next_run_at = next_slot(schedule.cron, schedule.timezone, now or datetime.now(UTC))
    else:
        schedule.disabled_reason = "disabled by an operator"
    return schedule
