"""Turn the data tool's output into the values report templates use.

The data tool (`fetch_weekly_report`) answers `{project: {id, name}, week, work_packages: [...]}`.
`build_context` keeps every key it was given, normalizes the work packages (missing fields become
None, a status or assignee given as an object is reduced to its name) and adds derived values:
`period`, `week`, `week_start`, `week_end`, `overdue_cutoff`, `totals_by_status`, `total`,
`overdue`, `unassigned`, `open_count`, `done_count`, `generated_at` and `changes` (what changed
since the previous report, `worker.reports.changes`; None when there is none).

Overdue is decided from the report's ISO week, never from the wall clock: a work package is
overdue when its due date is before `overdue_cutoff` (the Monday after the week, or `today` when
the caller passes an earlier day, e.g. for a report on the week in progress) and its status is not
one of DONE_STATUSES. A due date that does not parse is treated as no due date.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from worker.errors import InvalidArguments, TemplateError

# Statuses that close a work package (compared case-insensitively); the rest are open.
DONE_STATUSES = frozenset({"completed", "closed", "done"})
# What a work package without a status is counted under.
NO_STATUS = "Unknown"
# A name-like field may arrive as an object (OpenProject's HAL links); these keys hold its name.
_NAME_KEYS = ("name", "title", "login", "value")
_ISO_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


def iso_week_bounds(period: str) -> tuple[date, date]:
    """Monday and Sunday of an ISO week written like `2026-W47`.

    Raises:
        InvalidArguments: `period` is not an ISO week.
    """
    match = _ISO_WEEK.match(period.strip()) if isinstance(period, str) else None
    if match is None:
        raise InvalidArguments(f"period must be an ISO week like 2026-W47, got {period!r}")
    try:
        monday = date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise InvalidArguments(f"period {period!r} is not a week of that year") from None
    return monday, monday + timedelta(days=6)


def normalized_work_packages(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The data tool output's work packages, normalized (see the module docstring).

    Raises:
        TemplateError: `data` is not an object, `work_packages` is not a list, or an item of it is
            not an object.
    """
    if not isinstance(data, Mapping):
        raise TemplateError(f"report data must be a JSON object, got {type(data).__name__}")
    raw_items = data.get("work_packages")
    if raw_items is None:
        raw_items = []
    if not isinstance(raw_items, list):
        raise TemplateError(f"report data: work_packages must be a list, got {type(raw_items).__name__}")
    return [_work_package(index, item) for index, item in enumerate(raw_items)]


def build_context(
    data: Mapping[str, Any],
    period: str,
    *,
    today: date | None = None,
    generated_at: datetime | None = None,
    changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The template context for one report: the data tool's output plus derived values.

    `today` (optional) moves the overdue cutoff earlier than the end of the week, so items due
    later in the week in progress are not called overdue. `generated_at` defaults to now (UTC).
    `changes` is the week-over-week diff, given by the report job.

    Raises:
        InvalidArguments: `period` is not an ISO week like `2026-W47`.
        TemplateError: `data` is not an object, `work_packages` is not a list, or an item of it is
            not an object; the report cannot be rendered from such data.
    """
    week_start, week_end = iso_week_bounds(period)
    work_packages = normalized_work_packages(data)

    cutoff = week_end + timedelta(days=1)
    if today is not None and today < cutoff:
        cutoff = today
    counts = Counter(wp["status"] for wp in work_packages)
    done = [wp for wp in work_packages if _is_done(wp["status"])]
    overdue = [wp for wp in work_packages if not _is_done(wp["status"]) and _due_before(wp, cutoff)]
    week = data.get("week")
    stamp = (generated_at or datetime.now(UTC)).astimezone(UTC)
    return {
        **data,
        "project": _project(data.get("project")),
        "work_packages": work_packages,
        "period": period,
        "week": week if isinstance(week, str) and week.strip() else period,
        "week_start": week_start.isoformat(),
        "week_end": week_end.isoformat(),
        "overdue_cutoff": cutoff.isoformat(),
        # most common status first; ties alphabetically, so the order never depends on the server's
        "totals_by_status": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].lower()))),
        "total": len(work_packages),
        "done_count": len(done),
        "open_count": len(work_packages) - len(done),
        "overdue": overdue,
        "unassigned": [wp for wp in work_packages if wp["assignee"] is None],
        "generated_at": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        # what changed since the previous report (worker.reports.changes), None without one
        "changes": dict(changes) if changes is not None else None,
    }


def _project(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        project = dict(value)
        project["name"] = _name(value.get("name")) or _name(value.get("identifier")) or "Unnamed project"
        project.setdefault("id", None)
        return project
    return {"id": None, "name": _name(value) or "Unnamed project"}


def _work_package(index: int, item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise TemplateError(
            f"report data: work_packages[{index}] must be an object, got {type(item).__name__}"
        )
    wp = dict(item)
    wp["id"] = item.get("id")
    wp["subject"] = _name(item.get("subject")) or ""
    wp["status"] = _name(item.get("status")) or NO_STATUS
    wp["assignee"] = _name(item.get("assignee"))
    wp["priority"] = _name(item.get("priority"))
    due = _parse_date(item.get("due_date"))
    wp["due_date"] = due.isoformat() if due else None
    return wp


def _name(value: Any) -> str | None:
    """A display string for a field that may be a string, a number, an object or empty."""
    if isinstance(value, Mapping):
        for key in _NAME_KEYS:
            if isinstance(value.get(key), str | int) and str(value[key]).strip():
                return str(value[key]).strip()
        return None
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip() if isinstance(value, str | int | float) else ""
    return text or None


def _parse_date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        # accept full timestamps too ("2026-11-20T17:00:00Z"): the day is what matters
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def _is_done(status: str) -> bool:
    return status.strip().lower() in DONE_STATUSES


def _due_before(wp: Mapping[str, Any], cutoff: date) -> bool:
    due = wp["due_date"]
    return due is not None and date.fromisoformat(due) < cutoff
