"""`mcp.generate_report` end to end: real worker, Postgres, Redis, the demo MCP server, and a fake
OpenAI server on loopback driven through the real `openai` client."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from processes import wait_until
from testenv import DEMO_HTTP_TOKEN

from worker.client import submit_report, submit_tool
from worker.db.engine import session_scope
from worker.db.models import McpReport, McpTemplate
from worker.demo.sample_data import SEED_EXECUTIVE_SUMMARY, load_sample_data
from worker.demo.server import DATA_FILE
from worker.execution import audit
from worker.reports.storage import report_as_dict, save_template

PERIOD = "2026-W47"
TIMEOUT_S = 90.0

pytestmark = pytest.mark.usefixtures("worker_proc", "clean_db")


def demo_project(project_id: int) -> dict[str, Any]:
    projects = json.loads(DATA_FILE.read_text())["projects"]
    return next(p for p in projects if p["id"] == project_id)


@pytest.fixture
def seeded(demo_http: str) -> Iterator[None]:
    """The seed's sample data, its global report service pointed at the demo server."""
    with session_scope() as session:
        load_sample_data(
            session, {"openproject_weekly_report": {"url": demo_http, "api_key": DEMO_HTTP_TOKEN, "auth": {}}}
        )
    yield


def wait_report(task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with session_scope() as session:
            row = session.scalars(sa.select(McpReport).where(McpReport.task_id == task_id)).one_or_none()
            if row is not None:
                return report_as_dict(row)
            execution = audit.get(session, task_id)
            if execution is not None and execution.status == "error":
                return {"error": execution.error_message}
        return None

    return wait_until(done, TIMEOUT_S, f"report {task_id}", interval=0.1)  # type: ignore[no-any-return]


def test_weekly_report_from_the_bundled_template_has_correct_counts(seeded: None) -> None:
    with session_scope() as session:
        session.execute(sa.delete(McpTemplate).where(McpTemplate.name == "weekly_report.j2"))
    report = wait_report(submit_report("user1", "openproject_weekly_report", period=PERIOD).id)
    assert "error" not in report, report
    project = demo_project(1)
    content = report["content"]
    assert f"# {project['name']} Weekly Report" in content
    assert f"**Work packages**: {len(project['work_packages'])} total" in content
    for status, count in Counter(w["status"] for w in project["work_packages"]).items():
        assert f"- {status}: {count}" in content
    assert report["period"] == PERIOD and report["template"] == "weekly_report.j2"
    assert report["refined"] is False and report["raw_content"] == content
    with session_scope() as session:
        execution = session.get(audit.McpExecution, report["execution_id"])
        assert execution is not None and execution.tool_name == "fetch_weekly_report"
        assert execution.params == {"project_id": 1, "week": PERIOD}


def test_the_seeds_executive_summary_renders_unchanged_from_the_database(seeded: None) -> None:
    report = wait_report(
        submit_report("user1", "openproject_weekly_report", "executive_summary.j2", PERIOD).id
    )
    project = demo_project(1)
    counts = Counter(w["status"] for w in project["work_packages"])
    assert report["content"] == (
        f"# Executive Summary\n\n**Project**: {project['name']}\n"
        f"**Progress**: {len(project['work_packages'])} tasks total\n\n## Key Metrics\n"
        f"- Completed: {counts['Completed']}\n- In Progress: {counts['In Progress']}\n- Blocked: {counts['Blocked']}"
    )
    with session_scope() as session:
        stored = session.scalar(
            sa.select(McpTemplate.content).where(McpTemplate.name == "executive_summary.j2")
        )
    assert stored == SEED_EXECUTIVE_SUMMARY


def test_refinement_stores_the_models_text_and_keeps_the_raw_render(seeded: None, openai_fake: Any) -> None:
    openai_fake.polish()
    report = wait_report(
        submit_report("user1", "openproject_weekly_report", "executive_summary.j2", PERIOD, refine=True).id
    )
    assert report["refined"] is True and report["refine_error"] is None
    assert report["content"].endswith("_Polished by the fake model._")
    assert report["content"] != report["raw_content"]
    assert report["refine_model"] == "gpt-fake-1" and report["tokens"]["total"]
    assert any(report["raw_content"] in request.user_content for request in openai_fake.requests)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("fail", "500"), ("hang", "did not answer within 2 s"), ("drop", "dropped")],
)
def test_a_failed_refinement_stores_the_raw_render_with_the_reason(
    seeded: None, openai_fake: Any, mode: str, reason: str
) -> None:
    if mode == "fail":
        openai_fake.fail(500)
    elif mode == "hang":
        openai_fake.hang(6)
    else:
        openai_fake.drop_numbers(str(len(demo_project(1)["work_packages"])))
    report = wait_report(
        submit_report("user1", "openproject_weekly_report", "executive_summary.j2", PERIOD, refine=True).id
    )
    assert report["refined"] is False
    assert report["content"] == report["raw_content"]
    assert reason in (report["refine_error"] or "")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% for i in range(10**9) %}x{% endfor %}",
        "{{ 'x' * 10**9 }}",
    ],
)
def test_a_hostile_template_fails_cleanly_and_the_worker_survives(seeded: None, source: str) -> None:
    name = f"evil-{uuid.uuid4().hex[:6]}.j2"
    with session_scope() as session:
        session.add(McpTemplate(name=name, content=source))
    report = wait_report(submit_report("user1", "openproject_weekly_report", name, PERIOD).id)
    assert "TemplateError" in report["error"] and name in report["error"]
    after = submit_tool("user1", "openproject_weekly_report", "echo", {"message": "alive"})
    assert after.get(timeout=TIMEOUT_S)["status"] == "success"


def test_templates_are_validated_before_they_are_stored(db_session: Any) -> None:
    from worker.errors import TemplateError

    with pytest.raises(TemplateError, match="line 1"):
        save_template(db_session, "broken.j2", "{% for x in %}", None, None)
    assert db_session.scalar(sa.select(McpTemplate).where(McpTemplate.name == "broken.j2")) is None


def test_the_same_task_id_twice_yields_one_report(seeded: None, worker_proc: Any) -> None:
    task_id = f"report-{uuid.uuid4()}"
    first = wait_report(
        submit_report("user1", "openproject_weekly_report", period=PERIOD, task_id=task_id).id
    )
    submit_report("user1", "openproject_weekly_report", period=PERIOD, task_id=task_id)
    wait_until(
        lambda: any(task_id in line and "already stored" in line for line in worker_proc.log().splitlines()),
        TIMEOUT_S,
        "the second delivery to find the stored report",
    )
    with session_scope() as session:
        count = session.scalar(sa.select(sa.func.count()).where(McpReport.task_id == task_id))
    assert count == 1 and first["id"]
