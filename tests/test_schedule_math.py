"""Slot arithmetic of the report scheduler: every clock is passed in, nothing sleeps."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from worker.scheduling.cron import (
    DEFAULT_CRON,
    InvalidSchedule,
    due_slot,
    last_complete_iso_week,
    next_slot,
    parse_cron,
    parse_timezone,
    period_for_slot,
    previous_slot,
    slot_task_id,
)

MINUTE = timedelta(minutes=1)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: str, *args: int, fold: int = 0) -> datetime:
    """A wall time in `tz`, as UTC: aware datetimes sharing a tzinfo compare by wall time."""
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)


def run_every_minute(cron: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Play beat from `start` to `end` one minute at a time; the slots it ran, in order."""
    ran: list[datetime] = []
    last: datetime | None = previous_slot(cron, tz, start - MINUTE)
    now = start
    while now < end:
        slot = due_slot(cron, tz, now=now, created_at=LONG_AGO, last_slot=last)
        if slot is not None:
            ran.append(slot)
            last = slot
        now += MINUTE
    return ran


# --- default schedule -------------------------------------------------------------------------


def test_default_is_weekly_monday_0800() -> None:
    assert DEFAULT_CRON == "0 8 * * 1"
    wednesday = utc(2026, 11, 25, 12, 0)
    assert previous_slot(DEFAULT_CRON, "UTC", wednesday) == utc(2026, 11, 23, 8, 0)
    assert next_slot(DEFAULT_CRON, "UTC", wednesday) == utc(2026, 11, 30, 8, 0)


def test_slot_boundaries_are_inclusive_before_and_exclusive_after() -> None:
    slot = utc(2026, 11, 23, 8, 0)
    assert previous_slot(DEFAULT_CRON, "UTC", slot) == slot
    assert previous_slot(DEFAULT_CRON, "UTC", slot - timedelta(microseconds=1)) == utc(2026, 11, 16, 8, 0)
    assert next_slot(DEFAULT_CRON, "UTC", slot) == utc(2026, 11, 30, 8, 0)


def test_slots_are_wall_clock_in_the_schedule_zone() -> None:
    # 08:00 Berlin is 07:00 UTC in winter and 06:00 UTC in summer.
    assert previous_slot(DEFAULT_CRON, "Europe/Berlin", utc(2026, 11, 25)) == utc(2026, 11, 23, 7, 0)
    assert previous_slot(DEFAULT_CRON, "Europe/Berlin", utc(2026, 7, 1)) == utc(2026, 6, 29, 6, 0)


def test_returned_slots_are_utc() -> None:
    slot = next_slot(DEFAULT_CRON, "America/New_York", local("Asia/Tokyo", 2026, 5, 5, 9, 0))
    assert slot.tzinfo is UTC
    assert slot == local("America/New_York", 2026, 5, 11, 8, 0)


# --- periods ----------------------------------------------------------------------------------


def test_period_is_the_iso_week_before_the_slot() -> None:
    assert period_for_slot(local("Europe/Berlin", 2026, 11, 23, 8, 0), "Europe/Berlin") == "2026-W47"


@pytest.mark.parametrize(
    ("slot", "period"),
    [
        (utc(2026, 1, 5, 8), "2026-W01"),  # week 1 of 2026 starts on Monday 2025-12-29
        (utc(2025, 12, 29, 8), "2025-W52"),
        (utc(2027, 1, 4, 8), "2026-W53"),  # 2026 starts on a Thursday: it has 53 ISO weeks
        (utc(2021, 1, 4, 8), "2020-W53"),
        (utc(2027, 1, 11, 8), "2027-W01"),
    ],
)
def test_period_across_year_boundary(slot: datetime, period: str) -> None:
    assert period_for_slot(slot, "UTC") == period


def test_period_uses_the_local_date_of_the_slot() -> None:
    # Sunday 23:30 UTC is already Monday in Berlin: the Berlin slot names the week just ended.
    slot = utc(2027, 1, 3, 23, 30)
    assert period_for_slot(slot, "Europe/Berlin") == "2026-W53"
    assert period_for_slot(slot, "UTC") == "2026-W52"


@pytest.mark.parametrize(
    ("now", "week"),
    [
        (utc(2027, 1, 6, 12), "2026-W53"),
        (utc(2026, 1, 1, 0), "2025-W52"),
        (utc(2026, 11, 23, 0, 0), "2026-W47"),
        (local("Europe/Berlin", 2027, 1, 4, 0, 30), "2026-W52"),  # still Sunday in UTC
    ],
)
def test_last_complete_iso_week_in_utc(now: datetime, week: str) -> None:
    assert last_complete_iso_week(now) == week


def test_task_id_is_deterministic_and_zone_independent() -> None:
    slot = utc(2026, 11, 23, 7, 0)
    task_id = slot_task_id(42, slot)
    assert task_id == "schedule-42-20261123T070000Z"
    assert slot_task_id(42, slot.astimezone(ZoneInfo("Europe/Berlin"))) == task_id
    assert slot_task_id(43, slot) != task_id
    assert re.fullmatch(r"[A-Za-z0-9-]+", task_id)


# --- due slots --------------------------------------------------------------------------------


def test_three_week_outage_gives_one_catch_up_for_the_latest_slot() -> None:
    ran = utc(2026, 11, 2, 8, 0)
    now = utc(2026, 11, 25, 15, 0)  # slots of 11-09, 11-16 and 11-23 were missed
    slot = due_slot(DEFAULT_CRON, "UTC", now=now, created_at=LONG_AGO, last_slot=ran)
    assert slot == utc(2026, 11, 23, 8, 0)
    assert due_slot(DEFAULT_CRON, "UTC", now=now + MINUTE, created_at=LONG_AGO, last_slot=slot) is None


def test_never_a_slot_before_the_schedule_existed() -> None:
    created = utc(2026, 11, 24, 9, 0)  # a Tuesday: Monday's slot predates it
    assert due_slot(DEFAULT_CRON, "UTC", now=utc(2026, 11, 25), created_at=created, last_slot=None) is None
    assert due_slot(
        DEFAULT_CRON, "UTC", now=utc(2026, 11, 30, 8, 0), created_at=created, last_slot=None
    ) == utc(2026, 11, 30, 8, 0)


def test_created_exactly_at_a_slot_runs_it_and_a_second_later_does_not() -> None:
    slot = utc(2026, 11, 23, 8, 0)
    now = slot + timedelta(minutes=5)
    assert due_slot(DEFAULT_CRON, "UTC", now=now, created_at=slot, last_slot=None) == slot
    late = slot + timedelta(seconds=1)
    assert due_slot(DEFAULT_CRON, "UTC", now=now, created_at=late, last_slot=None) is None


def test_nothing_is_due_again_until_the_next_slot() -> None:
    slot = utc(2026, 11, 23, 8, 0)
    now = slot
    while now < utc(2026, 11, 30, 8, 0):
        assert due_slot(DEFAULT_CRON, "UTC", now=now, created_at=LONG_AGO, last_slot=slot) is None
        now += MINUTE
    assert due_slot(DEFAULT_CRON, "UTC", now=now, created_at=LONG_AGO, last_slot=slot) == now


def test_due_before_first_slot_of_a_new_schedule_is_none() -> None:
    assert (
        due_slot(
            "0 8 * * 1", "UTC", now=utc(2026, 11, 23, 7, 59), created_at=utc(2026, 11, 20), last_slot=None
        )
        is None
    )


# --- daylight saving time ---------------------------------------------------------------------

DAILY_0230 = "30 2 * * *"


@pytest.mark.parametrize(
    ("cron", "tz", "day", "expected"),
    [
        # 02:00 CET -> 03:00 CEST: 02:30 does not exist and runs an hour later, at 03:30 CEST.
        (DAILY_0230, "Europe/Berlin", date(2026, 3, 29), local("Europe/Berlin", 2026, 3, 29, 3, 30)),
        # 03:00 CEST -> 02:00 CET: 02:30 happens twice and runs at the first, 02:30 CEST.
        (DAILY_0230, "Europe/Berlin", date(2026, 10, 25), utc(2026, 10, 25, 0, 30)),
        # 02:00 EST -> 03:00 EDT: 02:30 runs at 03:30 EDT.
        (DAILY_0230, "America/New_York", date(2026, 3, 8), local("America/New_York", 2026, 3, 8, 3, 30)),
        # 02:00 EDT -> 01:00 EST: 02:30 is not repeated (01:xx is) and runs at 02:30 EST.
        (DAILY_0230, "America/New_York", date(2026, 11, 1), utc(2026, 11, 1, 7, 30)),
        ("30 1 * * *", "America/New_York", date(2026, 11, 1), utc(2026, 11, 1, 5, 30)),  # 01:30 EDT
    ],
)
def test_dst_day_runs_exactly_once_at_the_documented_instant(
    cron: str, tz: str, day: date, expected: datetime
) -> None:
    zone = ZoneInfo(tz)
    start = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
    end = (datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)
    assert run_every_minute(cron, tz, start, end) == [expected]


def test_days_around_the_spring_forward_keep_their_wall_time() -> None:
    slots = [utc(2026, 3, 27)]
    for _ in range(4):
        slots.append(next_slot(DAILY_0230, "Europe/Berlin", slots[-1]))
    walls = [s.astimezone(ZoneInfo("Europe/Berlin")).strftime("%d %H:%M %Z") for s in slots[1:]]
    assert walls == ["27 02:30 CET", "28 02:30 CET", "29 03:30 CEST", "30 02:30 CEST"]


def test_half_hourly_slots_in_the_gap_collapse_onto_one_instant() -> None:
    # 02:00 and 03:00 Berlin both land on 01:00 UTC that day: one slot, not two.
    after = utc(2026, 3, 29, 0, 0)
    got = [after]
    for _ in range(4):
        got.append(next_slot("*/30 * * * *", "Europe/Berlin", got[-1]))
    assert got[1:] == [
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 29, 2, 0),
    ]


def test_hourly_skips_the_repeated_hour_on_fall_back() -> None:
    # 02:00 happens at 00:00 and at 01:00 UTC; only the first is a slot.
    assert next_slot("0 * * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 0)) == utc(2026, 10, 25, 2, 0)


def test_a_skipped_calendar_day_collapses_onto_the_next() -> None:
    # Samoa skipped 2011-12-30: its noon maps onto noon of the 31st, which runs once.
    after = local("Pacific/Apia", 2011, 12, 29, 12, 0)
    slot = next_slot("0 12 * * *", "Pacific/Apia", after)
    assert slot == local("Pacific/Apia", 2011, 12, 31, 12, 0)
    assert next_slot("0 12 * * *", "Pacific/Apia", slot) == local("Pacific/Apia", 2012, 1, 1, 12, 0)


def test_a_fall_back_across_midnight_keeps_the_later_days_slot() -> None:
    # St. John's fell back from 00:01 NDT to 23:01 NST until 2011: Sunday's midnight came before
    # the second Saturday 23:30.
    tz = "America/St_Johns"
    sunday = local(tz, 2006, 10, 29, 0, 0)
    second_2330 = local(tz, 2006, 10, 28, 23, 30, fold=1)
    assert sunday < second_2330
    assert previous_slot("0 0 * * *", tz, second_2330) == sunday
    assert next_slot("0 0 * * *", tz, sunday - MINUTE) == sunday


def test_a_gap_across_midnight_shifts_a_slot_into_the_next_day() -> None:
    # Toronto skipped 23:30 to 00:30 on 1919-03-30: that day's 23:45 ran at 00:45 on the 31st.
    tz = "America/Toronto"
    shifted = local(tz, 1919, 3, 31, 0, 45)
    assert next_slot("45 23 * * *", tz, local(tz, 1919, 3, 31, 0, 40)) == shifted
    assert previous_slot("45 23 * * *", tz, local(tz, 1919, 3, 31, 12, 0)) == shifted
    assert next_slot("45 23 * * *", tz, shifted) == local(tz, 1919, 3, 31, 23, 45)


# --- cron day rules ---------------------------------------------------------------------------


def test_both_day_fields_restricted_match_either_like_cron() -> None:
    spec = parse_cron("0 8 1 * 1")
    assert spec.matches_day(date(2026, 11, 1))  # a Sunday, the 1st
    assert spec.matches_day(date(2026, 11, 2))  # a Monday
    assert not spec.matches_day(date(2026, 11, 3))


def test_a_starred_day_field_makes_both_required() -> None:
    spec = parse_cron("0 8 */7 * 1")  # days 1, 8, 15, 22, 29 that are Mondays
    assert spec.matches_day(date(2026, 6, 22))
    assert not spec.matches_day(date(2026, 7, 6))  # a Monday, the 6th
    assert not spec.matches_day(date(2026, 7, 1))  # the 1st, a Wednesday


def test_names_and_ranges_parse() -> None:
    spec = parse_cron("  */15 9-17  * jan,jul mon-fri ")
    assert spec.expr == "*/15 9-17 * jan,jul mon-fri"
    assert spec.minutes == (0, 15, 30, 45)
    assert spec.hours == tuple(range(9, 18))
    assert spec.months == {1, 7}
    assert spec.days_of_week == {1, 2, 3, 4, 5}


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "must have 5 fields"),
        ("0 8 * *", "must have 5 fields"),
        ("0 0 8 * * 1", "must have 5 fields"),
        ("@weekly", "must have 5 fields"),
        ("60 8 * * 1", "minute field '60'"),
        ("0 24 * * *", "hour field '24'"),
        ("0 8 0 * *", "day-of-month field '0'"),
        ("0 8 * 13 *", "month field '13'"),
        ("0 8 * * 7", "Sunday=0"),
        ("mon 8 * * *", "minute field 'mon' in 'mon 8 * * *' has invalid characters"),
        ("0 8 * * funday", "day-of-week field 'funday'"),
        ("*/0 8 * * *", "minute field '*/0'"),
        ("0 8 30 2 *", "never fires"),
        ("0 8 ? * 1", "day-of-month field '?'"),
    ],
)
def test_invalid_cron_is_rejected_with_a_clear_message(expr: str, message: str) -> None:
    with pytest.raises(InvalidSchedule, match=re.escape(message)):
        parse_cron(expr)
    with pytest.raises(InvalidSchedule):
        next_slot(expr, "UTC", utc(2026, 1, 1))


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus",
        "",
        "Europe/Berlin ",
        "../etc/passwd",
        "/etc/localtime",
        "localtime",
        "Europe",
        "zone.tab",
    ],
)
def test_invalid_time_zone_is_rejected(name: str) -> None:
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        parse_timezone(name)
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        due_slot(DEFAULT_CRON, name, now=utc(2026, 1, 1), created_at=LONG_AGO, last_slot=None)


def test_valid_time_zones_resolve() -> None:
    assert parse_timezone("UTC") == ZoneInfo("UTC")
    assert parse_timezone("America/New_York").key == "America/New_York"


def test_naive_datetimes_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware") as info:
        previous_slot(DEFAULT_CRON, "UTC", datetime(2026, 1, 1))
    assert not isinstance(info.value, InvalidSchedule)


def test_a_schedule_that_fires_too_rarely_is_reported() -> None:
    # Feb 1 on a Monday ("*/31" is day 1, and a starred day field ANDs): 2027, then 2038.
    assert next_slot("0 0 */31 2 1", "UTC", utc(2026, 1, 1)) == utc(2027, 2, 1)
    with pytest.raises(InvalidSchedule, match="less than once in 8 years"):
        next_slot("0 0 */31 2 1", "UTC", utc(2027, 2, 2))


# --- properties -------------------------------------------------------------------------------

crons = st.builds(
    "{} {} {} {} {}".format,
    st.sampled_from(["0", "30", "*/15", "5,35", "*", "59"]),
    st.sampled_from(["8", "2", "*/6", "1-3", "*", "0,23"]),
    st.sampled_from(["*", "1", "15", "29", "31", "1-7"]),
    st.sampled_from(["*", "1", "3,10", "*/3"]),
    st.sampled_from(["*", "1", "0", "1-5", "sat,sun"]),
)
zones = st.sampled_from(
    [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "America/Havana",
        "America/Santiago",
        "Pacific/Apia",
    ]
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


def _valid(cron: str) -> bool:
    try:
        parse_cron(cron)
    except InvalidSchedule:
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(cron=crons, tz=zones, now=instants)
def test_previous_and_next_slot_agree(cron: str, tz: str, now: datetime) -> None:
    assume(_valid(cron))
    before = previous_slot(cron, tz, now)
    after = next_slot(cron, tz, now)
    assert before is not None
    assert before <= now < after
    assert next_slot(cron, tz, before) == after  # nothing between the two
    assert previous_slot(cron, tz, after) == after
    assert previous_slot(cron, tz, after - timedelta(microseconds=1)) == before
    for slot in (before, after):
        assert slot.tzinfo is UTC
        assert slot.second == slot.microsecond == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    cron=crons,
    tz=zones,
    now=instants,
    created_back=st.timedeltas(min_value=timedelta(days=-30), max_value=timedelta(days=400)),
    last_back=st.none() | st.timedeltas(min_value=timedelta(days=-30), max_value=timedelta(days=400)),
)
def test_due_slot_respects_creation_and_last_run(
    cron: str, tz: str, now: datetime, created_back: timedelta, last_back: timedelta | None
) -> None:
    assume(_valid(cron))
    created = now - created_back
    last = None if last_back is None else now - last_back
    slot = due_slot(cron, tz, now=now, created_at=created, last_slot=last)
    if slot is None:
        latest = previous_slot(cron, tz, now)
        assert latest is None or latest < created or (last is not None and latest <= last)
        return
    assert slot == previous_slot(cron, tz, now)
    assert created <= slot <= now
    assert last is None or slot > last
    assert due_slot(cron, tz, now=now, created_at=created, last_slot=slot) is None


def _transition_days(tz: str, year: int) -> list[date]:
    zone = ZoneInfo(tz)
    days = [date(year, 1, 1) + timedelta(days=n) for n in range(366)]
    noon = [datetime(d.year, d.month, d.day, 12, tzinfo=zone).utcoffset() for d in days]
    return [days[n + 1] for n in range(len(days) - 1) if noon[n] != noon[n + 1]]


def _brute_slots(cron: str, tz: str, first: date, days: int) -> list[datetime]:
    """Every matching local minute of the days, mapped with fold=0: the rule, with no shortcuts."""
    spec, zone = parse_cron(cron), ZoneInfo(tz)
    found = set()
    for n in range(days):
        day = first + timedelta(days=n)
        start = datetime(day.year, day.month, day.day)
        for minute in range(24 * 60):
            wall = start + timedelta(minutes=minute)
            if spec.matches_day(day) and wall.hour in spec.hours and wall.minute in spec.minutes:
                found.add(wall.replace(tzinfo=zone, fold=0).astimezone(UTC))
    return sorted(found)


@pytest.mark.parametrize("tz", ["Europe/Berlin", "Australia/Lord_Howe", "America/Havana", "America/Santiago"])
@pytest.mark.parametrize("cron", ["7,37 * * * *", "30 2 * * *", "15,45 0,1,23 * * *", "0 * * * 0"])
def test_slot_chain_matches_brute_force_around_every_transition(tz: str, cron: str) -> None:
    for day in _transition_days(tz, 2026):
        expected = _brute_slots(cron, tz, day - timedelta(days=1), 3)
        inner = expected[1:-1]  # the window's edges are incomplete: other days' shifts may land there
        got = [inner[0]]
        while got[-1] < inner[-1]:
            got.append(next_slot(cron, tz, got[-1]))
        assert got == inner
        assert [previous_slot(cron, tz, s - timedelta(seconds=1)) for s in inner[1:]] == inner[:-1]
