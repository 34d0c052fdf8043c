"""Pure slot arithmetic for per-user report schedules: no database, no Celery app.

A *slot* is one scheduled instant of a schedule's cron expression, read as wall-clock time in the
schedule's IANA zone and returned as an aware UTC datetime. Celery's `crontab` only parses and
validates the fields; the instants are computed here with `zoneinfo`, because crontab's
`is_due`/`remaining_estimate` reason from "last run at" and misbehave across DST changes.

Rules:
- Day matching follows Vixie cron: when both day-of-month and day-of-week are restricted (neither
  field starts with `*`), a day matches if EITHER does; otherwise both must match.
- A wall time repeated by a fall-back runs once, at its first occurrence (fold=0).
- A wall time skipped by a spring-forward runs shifted forward by the gap (02:30 in a one-hour gap
  runs at 03:30 new time). Two wall times that land on the same instant are one slot.
- Due: the most recent slot <= now that is > last_slot and >= created_at, so a long outage gives
  one catch-up run and no schedule ever runs for a slot before it existed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab

DEFAULT_CRON = "0 8 * * 1"
DEFAULT_TIMEZONE = "UTC"

# Days searched for a slot: Feb 29 can be 8 years from the last one (2096 -> 2104, 2100 is no leap
# year); the extra days cover the one-day margins taken around DST shifts.
_HORIZON_DAYS = 8 * 366 + 3

# (name in messages, crontab keyword, allowed characters, range hint), in cron's field order.
_FIELDS = (
    ("minute", "minute", r"[0-9*,/-]+", "0-59"),
    ("hour", "hour", r"[0-9*,/-]+", "0-23"),
    ("day-of-month", "day_of_month", r"[0-9*,/-]+", "1-31"),
    ("month", "month_of_year", r"[0-9A-Za-z*,/-]+", "1-12 or jan-dec"),
    ("day-of-week", "day_of_week", r"[0-9A-Za-z*,/-]+", "0-6 with Sunday=0, or sun-sat"),
)
# Names zoneinfo resolves that mean different things on different hosts.
_HOST_DEPENDENT_ZONES = frozenset({"localtime", "posixrules"})
_ZONE_HELP = "unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"


_Accept = Callable[[datetime], bool]


class InvalidSchedule(ValueError):
    """A cron expression or time zone that cannot be used as written."""


@dataclass(frozen=True)
class CronSpec:
    """A validated cron expression, its fields expanded to sorted values."""

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday, as in cron
    day_or: bool  # both day fields restricted: either may match (Vixie cron)

    def matches_day(self, day: date) -> bool:
        """Whether any slot falls on this local calendar day."""
        if day.month not in self.months:
            return False
        dom = day.day in self.days_of_month
        dow = day.isoweekday() % 7 in self.days_of_week
        return (dom or dow) if self.day_or else (dom and dow)


@lru_cache(maxsize=1024)
def parse_cron(expr: str) -> CronSpec:
    """Validate a 5-field cron expression (minute hour day-of-month month day-of-week).

    Raises:
        InvalidSchedule: the expression does not have 5 fields, a field does not parse or is out
            of range, or the day and month fields can never match together (e.g. 30 2).
    """
    fields = expr.split() if isinstance(expr, str) else []
    if len(fields) != 5:
        raise InvalidSchedule(
            f"cron expression must have 5 fields 'minute hour day-of-month month day-of-week', got {expr!r}"
        )
    sets: dict[str, set[int]] = {}
    for (label, keyword, allowed, hint), value in zip(_FIELDS, fields, strict=True):
        # Celery resolves day and month names in every field ("mon" is a valid minute to it).
        if not re.fullmatch(allowed, value):
            raise InvalidSchedule(f"cron {label} field {value!r} in {expr!r} has invalid characters")
        try:
            sets[keyword] = getattr(crontab(**{keyword: value}), keyword)
        except ValueError as exc:  # celery's ParseException is a ValueError too
            raise InvalidSchedule(f"cron {label} field {value!r} in {expr!r}: {exc} ({hint})") from exc
    try:
        crontab(*fields[:2], day_of_week=fields[4], day_of_month=fields[2], month_of_year=fields[3])
    except ValueError as exc:
        raise InvalidSchedule(f"cron expression {expr!r} never fires: {exc}") from exc
    return CronSpec(
        expr=" ".join(fields),
        minutes=tuple(sorted(sets["minute"])),
        hours=tuple(sorted(sets["hour"])),
        days_of_month=frozenset(sets["day_of_month"]),
        months=frozenset(sets["month_of_year"]),
        days_of_week=frozenset(sets["day_of_week"]),
        day_or=not fields[2].startswith("*") and not fields[4].startswith("*"),
    )


def parse_timezone(name: str) -> ZoneInfo:
    """Resolve an IANA time zone name such as "Europe/Berlin".

    Raises:
        InvalidSchedule: the name is not a known IANA zone, or names the host's own zone.
    """
    try:
        if isinstance(name, str) and name not in _HOST_DEPENDENT_ZONES:
            return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidSchedule(_ZONE_HELP.format(name=name)) from exc
    raise InvalidSchedule(_ZONE_HELP.format(name=name))


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def _uniform_offset(zone: ZoneInfo, start: datetime) -> timedelta | None:
    """The one UTC offset fold=0 gives every minute of the local hour from `start`, else None."""
    # tzdb never changes offset and back within an hour, so equal ends mean an equal middle.
    first, last = zone.utcoffset(start), zone.utcoffset(start + timedelta(minutes=59))
    return first if first == last else None


def _day_slots(spec: CronSpec, zone: ZoneInfo, day: date) -> list[datetime]:
    """The slot instants (UTC, sorted, distinct) of one local calendar day."""
    if not spec.matches_day(day):
        return []
    slots: set[datetime] = set()
    for hour in spec.hours:
        start = datetime.combine(day, time(hour))
        offset = _uniform_offset(zone, start)
        if offset is not None:  # nearly every hour: plain arithmetic, no zoneinfo call per minute
            base = (start - offset).replace(tzinfo=UTC)
            slots.update(base + timedelta(minutes=m) for m in spec.minutes)
        else:
            # fold=0 gives both DST rules: the first of a repeated time, and for a skipped time the
            # pre-change offset, which lands it the length of the gap later.
            slots.update(start.replace(minute=m, tzinfo=zone, fold=0).astimezone(UTC) for m in spec.minutes)
    return sorted(slots)


def _scan(
    spec: CronSpec, zone: ZoneInfo, day: date, step: int, days: int, accept: _Accept
) -> datetime | None:
    """Walk up to `days` local days from `day` by `step` (+1/-1); the nearest accepted slot.

    Once a day has an accepted slot one more day is read: a gap shift can carry a day's slot past
    the next day's first ones.
    """
    pick = min if step > 0 else max
    best: datetime | None = None
    for _ in range(days):
        found = [s for s in _day_slots(spec, zone, day) if accept(s)]
        if best is not None:
            return pick([best, *found])
        if found:
            best = pick(found)
        day += timedelta(days=step)
    return best


def _previous(spec: CronSpec, zone: ZoneInfo, at: datetime, floor: datetime | None) -> datetime | None:
    # Start a day after `at`'s local date: a fall-back at midnight puts part of that day before `at`.
    first = at.astimezone(zone).date() + timedelta(days=1)
    days = _HORIZON_DAYS
    if floor is not None:
        days = min(days, (first - floor.astimezone(zone).date()).days + 2)
    return _scan(spec, zone, first, -1, days, lambda s: s <= at)


def previous_slot(cron: str, tz: str, at: datetime) -> datetime | None:
    """The latest slot instant <= `at` (UTC), or None if there is none in the last 8 years.

    Raises:
        InvalidSchedule: the cron expression or time zone is invalid.
        ValueError: `at` is naive.
    """
    return _previous(parse_cron(cron), parse_timezone(tz), _aware(at, "at"), None)


def next_slot(cron: str, tz: str, after: datetime) -> datetime:
    """The earliest slot instant > `after` (UTC).

    Raises:
        InvalidSchedule: the cron expression or time zone is invalid, or it fires less than once
            in 8 years (e.g. a day-of-month and day-of-week that rarely coincide).
        ValueError: `after` is naive.
    """
    spec, zone = parse_cron(cron), parse_timezone(tz)
    _aware(after, "after")
    # Start a day early: a gap shift can carry the day before's slot past `after`.
    first = after.astimezone(zone).date() - timedelta(days=1)
    slot = _scan(spec, zone, first, 1, _HORIZON_DAYS, lambda s: s > after)
    if slot is None:
        raise InvalidSchedule(
            f"cron expression {cron!r} fires less than once in 8 years after {after:%Y-%m-%d}"
        )
    return slot


def due_slot(
    cron: str, tz: str, *, now: datetime, created_at: datetime, last_slot: datetime | None
) -> datetime | None:
    """The slot to run now, or None: the latest slot <= now if it is > last_slot and >= created_at.

    Only the latest slot is considered, so after an outage one catch-up run replaces all the
    missed ones.

    Raises:
        InvalidSchedule: the cron expression or time zone is invalid.
        ValueError: a datetime argument is naive.
    """
    _aware(now, "now")
    floor = _aware(created_at, "created_at")
    if last_slot is not None:
        floor = max(floor, _aware(last_slot, "last_slot"))
    # The floor bounds the backward scan: this runs every minute for every enabled schedule.
    slot = _previous(parse_cron(cron), parse_timezone(tz), now, floor)
    if slot is None or slot < created_at or (last_slot is not None and slot <= last_slot):
        return None
    return slot


def _iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def period_for_slot(slot: datetime, tz: str) -> str:
    """The report period a slot names: the ISO week before the slot's local date, "YYYY-Www".

    Raises:
        InvalidSchedule: the time zone is invalid.
        ValueError: `slot` is naive.
    """
    local_day = _aware(slot, "slot").astimezone(parse_timezone(tz)).date()
    return _iso_week(local_day - timedelta(days=7))


def last_complete_iso_week(now: datetime) -> str:
    """The ISO week before the current one in UTC, "YYYY-Www".

    Raises:
        ValueError: `now` is naive.
    """
    return _iso_week(_aware(now, "now").astimezone(UTC).date() - timedelta(days=7))


def slot_task_id(schedule_id: int, slot: datetime) -> str:
    """A deterministic Celery task id for one (schedule, slot): "schedule-<id>-<YYYYmmddTHHMMSSZ>".

    Raises:
        ValueError: `slot` is naive.
    """
    return f"schedule-{int(schedule_id)}-{_aware(slot, 'slot').astimezone(UTC):%Y%m%dT%H%M%SZ}"
