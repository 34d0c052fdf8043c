"""build_context: derived counts, overdue rules, and tolerance of odd data."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from worker.errors import InvalidArguments, TemplateError
from worker.reports import build_context, iso_week_bounds

from .conftest import GENERATED_AT, PERIOD, sample_data


def wp(**fields: Any) -> dict[str, Any]:
    return {"id": 1, "subject": "x", "status": "New", "assignee": "Ann", "due_date": None, **fields}


def test_derived_values(context: dict[str, Any]) -> None:
    assert context["period"] == PERIOD
    assert context["week"] == PERIOD
    assert (context["week_start"], context["week_end"]) == ("2026-11-16", "2026-11-22")
    assert context["overdue_cutoff"] == "2026-11-23"
    assert context["total"] == 7
    assert list(context["totals_by_status"].items()) == [
        ("In Progress", 3),
        ("Completed", 2),
        ("Blocked", 1),
        ("New", 1),
    ]
    assert [w["id"] for w in context["overdue"]] == [3, 4]
    assert [w["id"] for w in context["unassigned"]] == [4, 6]
    assert (context["done_count"], context["open_count"]) == (2, 5)
    assert context["generated_at"] == "2026-11-23 09:30 UTC"
    assert context["project"] == {"id": 7, "name": "Apollo"}


def test_overdue_is_judged_at_the_end_of_the_period_not_today() -> None:
    data = {"work_packages": [wp(id=1, due_date="2026-11-22"), wp(id=2, due_date="2026-11-23")]}

    late = build_context(data, PERIOD)
    much_later = build_context(data, PERIOD, today=date(2030, 1, 1))

    assert [w["id"] for w in late["overdue"]] == [1]  # due on the week's Sunday: overdue at its end
    assert [w["id"] for w in much_later["overdue"]] == [1]  # a later today changes nothing


def test_today_inside_the_week_moves_the_cutoff_earlier() -> None:
    data = {"work_packages": [wp(id=1, due_date="2026-11-17"), wp(id=2, due_date="2026-11-18")]}

    context = build_context(data, PERIOD, today=date(2026, 11, 18))

    assert context["overdue_cutoff"] == "2026-11-18"
    assert [w["id"] for w in context["overdue"]] == [1]  # due today is not overdue yet


@pytest.mark.parametrize("status", ["Completed", "closed", "DONE", " Done "])
def test_finished_work_is_never_overdue(status: str) -> None:
    context = build_context({"work_packages": [wp(status=status, due_date="2020-01-01")]}, PERIOD)
    assert context["overdue"] == []
    assert context["done_count"] == 1


def test_odd_fields_are_normalized() -> None:
    data = {
        "project": "Legacy",
        "week": "",
        "extra": {"kept": True},
        "work_packages": [
            {"id": 1, "subject": "HAL", "status": {"name": "In Progress"}, "assignee": {"name": "Ann"},
             "due_date": "2026-11-20T17:00:00Z"},
            {"id": 2, "status": None, "assignee": "   ", "due_date": "next week"},
            {"id": 3, "subject": 42, "status": "", "assignee": {"href": None}, "due_date": 20261120},
            {},
        ],
    }  # fmt: skip

    context = build_context(data, PERIOD, generated_at=GENERATED_AT)

    first, second, third, empty = context["work_packages"]
    assert (first["status"], first["assignee"], first["due_date"]) == ("In Progress", "Ann", "2026-11-20")
    assert (second["subject"], second["status"], second["assignee"], second["due_date"]) == (
        "",
        "Unknown",
        None,
        None,
    )
    assert (third["subject"], third["assignee"], third["due_date"]) == ("42", None, None)
    assert empty == {
        "id": None,
        "subject": "",
        "status": "Unknown",
        "assignee": None,
        "priority": None,
        "due_date": None,
    }
    assert context["project"] == {"id": None, "name": "Legacy"}
    assert context["week"] == PERIOD
    assert context["extra"] == {"kept": True}
    assert context["totals_by_status"] == {"Unknown": 3, "In Progress": 1}
    assert [w["id"] for w in context["overdue"]] == [1]
    assert len(context["unassigned"]) == 3


def test_missing_work_packages_is_an_empty_week() -> None:
    context = build_context({"project": {"id": 1, "name": "P"}}, PERIOD)
    assert (context["total"], context["totals_by_status"], context["overdue"]) == (0, {}, [])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "report data must be a JSON object, got list"),
        ({"work_packages": "none"}, "work_packages must be a list, got str"),
        ({"work_packages": {"1": {}}}, "work_packages must be a list, got dict"),
        ({"work_packages": [wp(), "oops"]}, r"work_packages\[1\] must be an object, got str"),
    ],
)
def test_unusable_data_is_a_template_error(data: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        build_context(data, PERIOD)


@pytest.mark.parametrize("period", ["2026-47", "2026-W54", "last week", "", "2026-W00"])
def test_bad_period_is_invalid_arguments(period: str) -> None:
    with pytest.raises(InvalidArguments, match="period"):
        build_context(sample_data(), period)


def test_iso_week_bounds_across_a_year_boundary() -> None:
    assert iso_week_bounds("2026-W01") == (date(2025, 12, 29), date(2026, 1, 4))
    assert iso_week_bounds("2026-W53") == (date(2026, 12, 28), date(2027, 1, 3))


def test_generated_at_defaults_to_now_in_utc() -> None:
    stamp = build_context({}, PERIOD)["generated_at"]
    parsed = datetime.strptime(stamp, "%Y-%m-%d %H:%M UTC").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 3600
