"""The delivery log: one `mcp_report_deliveries` row per report and channel, and its claim.

Lifecycle (one place writes each transition):

    pending ──claim──▶ sending ──▶ delivered
       ▲                 │  └────▶ failed        (permanent, or transient on the last attempt)
       │                 └───────▶ retrying ──claim──▶ sending ...
       └── `reports deliver ID` (failed → pending)

A claim is a conditional UPDATE (pending/retrying, or sending whose lease ran out), so two
deliveries of the task, or two report tasks of one slot, send once. A worker that dies holding a
claim has it released by its main process (`release_lost`) or lets the lease run out; a kill
after the receiver accepted but before the row says `delivered` sends again (at-least-once).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.db.engine import session_scope
from worker.db.models import McpReportDelivery
from worker.errors import ExecutionHeld, InvalidArguments

# A delivery that finds the row being sent by another looks again after at most this long.
HELD_RECHECK_S = 10.0
# Errors stored on a row are one line of at most this many characters.
MAX_ERROR_CHARS = 500


class Status(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


CLAIMABLE = (Status.PENDING.value, Status.RETRYING.value)


@dataclass(frozen=True)
class Claimed:
    id: int
    report_id: int
    channel: str
    channel_key: str
    target: str
    config: dict[str, Any]
    attempts: int


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they are stored in UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _iso(value: datetime | None) -> str | None:
    aware = _aware(value)
    return aware.isoformat() if aware is not None else None


def add_deliveries(
    session: Session, report_id: int, channels: Iterable[Mapping[str, Any]], targets: Mapping[str, str]
) -> list[int]:
    """One row per channel for this report (a row already there is kept as it is); the ids of
    the report's rows still waiting to be sent."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    keys = []
    for item in channels:
        key = str(item["key"])
        keys.append(key)
        session.execute(
            insert(McpReportDelivery)
            .values(
                report_id=report_id,
                channel=str(item["type"]),
                channel_key=key,
                target=targets[key][:500],
                config=dict(item),
                status=Status.PENDING.value,
            )
            .on_conflict_do_nothing()
        )
    if not keys:
        return []
    return list(
        session.scalars(
            sa.select(McpReportDelivery.id)
            .where(
                McpReportDelivery.report_id == report_id,
                McpReportDelivery.channel_key.in_(keys),
                McpReportDelivery.status.in_(CLAIMABLE),
            )
            .order_by(McpReportDelivery.id)
        )
    )


def claim(delivery_id: int, task_id: str, lease_s: float) -> Claimed | None:
    """Take the row for sending (attempts + 1); None when there is nothing to send (delivered or
    failed already).

    Raises:
        ExecutionHeld: another delivery holds it; `retry_after` says when its lease runs out.
        InvalidArguments: no such delivery.
    """
    now = _now()
    with session_scope() as session:
        result = session.execute(
            sa.update(McpReportDelivery)
            .where(
                McpReportDelivery.id == delivery_id,
                sa.or_(
                    McpReportDelivery.status.in_(CLAIMABLE),
                    sa.and_(
                        McpReportDelivery.status == Status.SENDING.value,
                        McpReportDelivery.claimed_until < now,
                    ),
                ),
            )
            .values(
                status=Status.SENDING.value,
                claimed_by=task_id,
                claimed_until=now + timedelta(seconds=lease_s),
                attempts=McpReportDelivery.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        row = session.get(McpReportDelivery, delivery_id)
        if row is None:
            raise InvalidArguments(f"no delivery with id {delivery_id}")
        if not result.rowcount:  # type: ignore[attr-defined]
            if row.status == Status.SENDING.value:
                until = _aware(row.claimed_until) or now
                # look again soon: the holder usually finishes (or dies and is released) well
                # before its lease runs out
                remaining = (until - now).total_seconds()
                raise ExecutionHeld(
                    f"delivery {delivery_id} is being sent by {row.claimed_by}",
                    retry_after=min(max(remaining, 1.0), HELD_RECHECK_S),
                )
            return None
        return Claimed(
            row.id,
            row.report_id,
            row.channel,
            row.channel_key,
            row.target,
            dict(row.config or {}),
            row.attempts,
        )


def finish(
    delivery_id: int,
    task_id: str,
    status: Status,
    *,
    error: str | None = None,
    code: int | None = None,
    message_id: str | None = None,
) -> bool:
    """Record the outcome of this task's claim; False when the claim was lost meanwhile."""
    values: dict[str, Any] = {
        "status": status.value,
        "last_error": " ".join(error.split())[:MAX_ERROR_CHARS] if error else None,
        "response_code": code,
        "claimed_by": None,
        "claimed_until": None,
    }
    if message_id is not None:
        values["message_id"] = message_id
    if status is Status.DELIVERED:
        values["delivered_at"] = _now()
    with session_scope() as session:
        result = session.execute(
            sa.update(McpReportDelivery)
            .where(
                McpReportDelivery.id == delivery_id,
                McpReportDelivery.claimed_by == task_id,
                McpReportDelivery.status == Status.SENDING.value,
            )
            .values(**values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def release_lost(task_id: str) -> bool:
    """Free the claim of a task whose process died (its main process calls this): the redelivery
    claims the row at once."""
    with session_scope() as session:
        result = session.execute(
            sa.update(McpReportDelivery)
            .where(McpReportDelivery.claimed_by == task_id, McpReportDelivery.status == Status.SENDING.value)
            .values(
                status=Status.RETRYING.value,
                claimed_by=None,
                claimed_until=None,
                last_error="the worker process died while sending",
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def reopen_failed(session: Session, report_id: int) -> list[int]:
    """Make the report's failed deliveries pending again (for `reports deliver ID`); their ids."""
    ids = list(
        session.scalars(
            sa.select(McpReportDelivery.id).where(
                McpReportDelivery.report_id == report_id, McpReportDelivery.status == Status.FAILED.value
            )
        )
    )
    if ids:
        session.execute(
            sa.update(McpReportDelivery)
            .where(McpReportDelivery.id.in_(ids), McpReportDelivery.status == Status.FAILED.value)
            .values(status=Status.PENDING.value)
        )
    return ids


def deliveries_of(session: Session, report_id: int) -> list[dict[str, Any]]:
    """The report's delivery rows as shown to an operator (no channel config: it holds secrets)."""
    rows = session.scalars(
        sa.select(McpReportDelivery)
        .where(McpReportDelivery.report_id == report_id)
        .order_by(McpReportDelivery.id)
    )
    return [
        {
            "id": r.id,
            "report_id": r.report_id,
            "channel": r.channel,
            "target": r.target,
            "status": r.status,
            "attempts": r.attempts,
            "last_error": r.last_error,
            "response_code": r.response_code,
            "message_id": r.message_id,
            "delivered_at": _iso(r.delivered_at),
        }
        for r in rows
    ]
