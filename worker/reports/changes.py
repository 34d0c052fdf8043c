"""What changed since the previous report: work packages added, removed, and status moves.

The previous report is the latest stored report of the same user, service and template for an
earlier period; its work packages are those of the data call it was rendered from (its
`mcp_executions` row). Work packages are matched by `id` (those without one are not compared).
Templates get the result as `changes`, None when there is nothing to compare with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.db.models import McpExecution, McpReport
from worker.reports.context import normalized_work_packages


def compute_changes(
    previous: Iterable[Mapping[str, Any]], current: Iterable[Mapping[str, Any]], previous_period: str
) -> dict[str, Any]:
    """The changes from one list of (normalized) work packages to the next, in id order.

    Returns `{previous_period, added, removed, status_changes, count}`; each status change is
    `{id, subject, from, to}`.
    """
    before = {_key(wp): wp for wp in previous if wp.get("id") is not None}
    after = {_key(wp): wp for wp in current if wp.get("id") is not None}
    added = [dict(after[k]) for k in sorted(after.keys() - before.keys(), key=_order)]
    removed = [dict(before[k]) for k in sorted(before.keys() - after.keys(), key=_order)]
    moves = [
        {
            "id": after[k]["id"],
            "subject": after[k].get("subject"),
            "from": before[k]["status"],
            "to": after[k]["status"],
        }
        for k in sorted(after.keys() & before.keys(), key=_order)
        if before[k].get("status") != after[k].get("status")
    ]
    return {
        "previous_period": previous_period,
        "added": added,
        "removed": removed,
        "status_changes": moves,
        "count": len(added) + len(removed) + len(moves),
    }


def _key(wp: Mapping[str, Any]) -> str:
    return str(wp["id"])


def _order(key: str) -> tuple[int, int | str]:
    # numeric ids in numeric order, then the rest alphabetically
    return (0, int(key)) if key.isdigit() else (1, key)


def previous_changes(
    session: Session,
    *,
    user: str,
    service: str,
    template: str,
    period: str,
    current: Iterable[Mapping[str, Any]],
) -> dict[str, Any] | None:
    """The changes since the latest earlier report of this user, service and template, or None
    when there is none (or its data is gone: pruned, or not an object with work packages)."""
    row = session.execute(
        sa.select(McpReport.period, McpExecution.result)
        .join(McpExecution, McpExecution.id == McpReport.execution_id)
        .where(
            McpReport.user_id == user,
            McpReport.service == service,
            McpReport.template == template,
            McpReport.period < period,
        )
        .order_by(McpReport.period.desc(), McpReport.created_at.desc(), McpReport.id.desc())
        .limit(1)
    ).first()
    if row is None or not isinstance(row.result, Mapping):
        return None
    try:
        before = normalized_work_packages(row.result)
    except Exception:  # a stored result that no longer normalizes: nothing to compare with
        return None
    return compute_changes(before, current, row.period)
