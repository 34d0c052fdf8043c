"""Week-over-week changes: the diff itself, and a scripted two-week sequence through the report job
(a real MCP stdio server answering each week's work packages) whose second report shows them."""

from __future__ import annotations

import json
import shlex
import sys
import uuid
from pathlib import Path

import pytest

from worker.db.engine import session_scope
from worker.db.models import McpReport
from worker.reports.changes import compute_changes
from worker.reports.context import normalized_work_packages
from worker.reports.job import generate_report
from worker.services.store import save_service

WEEKLY_SERVER = Path(__file__).parents[1] / "fakes" / "weekly_server.py"

WEEK_1 = [
    {"id": 1, "subject": "Design API", "status": "New"},
    {"id": 2, "subject": "Write docs", "status": "In progress"},
    {"id": 3, "subject": "Old spike", "status": "Closed"},
    {"id": 5, "subject": "Fix login", "status": "New"},
]
WEEK_2 = [
    {"id": 1, "subject": "Design API", "status": "In progress"},  # moved
    {"id": 2, "subject": "Write docs", "status": "Closed"},  # moved
    {"id": 5, "subject": "Fix login", "status": {"name": "Rejected"}},  # moved (status as an object)
    {"id": 7, "subject": "Release 1.0", "status": "New"},  # added
    {"id": 6, "subject": "Load test", "status": "New"},  # added
    # 3 removed
]


def test_changes_name_added_removed_and_moved_work_packages_in_id_order() -> None:
    changes = compute_changes(
        normalized_work_packages({"work_packages": WEEK_1}),
        normalized_work_packages({"work_packages": WEEK_2}),
        "2026-W46",
    )
    assert [wp["id"] for wp in changes["added"]] == [6, 7]
    assert [wp["id"] for wp in changes["removed"]] == [3]
    assert [(m["id"], m["from"], m["to"]) for m in changes["status_changes"]] == [
        (1, "New", "In progress"),
        (2, "In progress", "Closed"),
        (5, "New", "Rejected"),
    ]
    assert changes["count"] == 6 and changes["previous_period"] == "2026-W46"


def test_nothing_changed_and_packages_without_ids_are_not_compared() -> None:
    same = normalized_work_packages({"work_packages": [*WEEK_1, {"subject": "no id"}]})
    changes = compute_changes(same, same, "2026-W10")
    assert changes["count"] == 0 and not changes["added"] and not changes["status_changes"]


@pytest.mark.usefixtures("clean_db")
@pytest.mark.parametrize("template", ["weekly_report.j2", "executive_summary.j2"])
def test_a_two_week_sequence_gives_the_second_report_its_changes(tmp_path: Path, template: str) -> None:
    weeks = tmp_path / "weeks.json"
    weeks.write_text(json.dumps({"2026-W46": WEEK_1, "2026-W47": WEEK_2}), encoding="utf-8")
    user = f"wow-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "scripted",
                "interaction_mode": "stdio",
                "url": f"{shlex.quote(sys.executable)} {shlex.quote(str(WEEKLY_SERVER))} {shlex.quote(str(weeks))}",
                "api_key": "unused-key",
            },
        )
    reports = []
    for period in ("2026-W46", "2026-W47"):
        result = generate_report(
            task_id=f"{user}-{period}",
            user_id=user,
            service="scripted",
            template=template,
            period=period,
            final_attempt=True,
        )
        with session_scope() as session:
            row = session.get(McpReport, result.report_id)
            assert row is not None
            reports.append(row.content)
    first, second = reports
    assert "changed status" not in first
    if template == "weekly_report.j2":
        assert "No earlier report to compare with." in first
        assert "## Changes since 2026-W46" in second
        assert "- 2 work packages added: #6 Load test (New), #7 Release 1.0 (New)" in second
        assert "- 1 work package removed: #3 Old spike" in second
        assert (
            "- 3 work packages changed status: #1 Design API (New → In progress), "
            "#2 Write docs (In progress → Closed), #5 Fix login (New → Rejected)"
        ) in second
    else:
        assert "## Changes since 2026-W46" in second
        assert "- 2 work packages added" in second and "- 1 work package removed" in second
        assert "- 3 work packages changed status: Design API (New → In progress)" in second
