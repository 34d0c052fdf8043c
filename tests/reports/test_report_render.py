"""Rendering: the bundled templates, the seed's templates, errors and undefined names."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import TemplateError
from worker.reports import (
    BUNDLED_TEMPLATE_NAMES,
    RenderResult,
    bundled_template,
    compile_template,
    render_template,
)

# Exactly the seed document's INSERT INTO mcp_templates values, with `\n` as newlines.
SEED_WEEKLY_REPORT = (
    "# {{ project.name }} Weekly Report\n\n**Week**: {{ week }}\n\n## Tasks\n"
    "{% for task in work_packages %}- {{ task.subject }} ({{ task.status }})\n{% endfor %}"
)
SEED_EXECUTIVE_SUMMARY = (
    "# Executive Summary\n\n**Project**: {{ project.name }}\n**Progress**: {{ work_packages|length }} "
    "tasks total\n\n## Key Metrics\n- Completed: {{ work_packages|selectattr('status', 'equalto', "
    "'Completed')|list|length }}\n- In Progress: {{ work_packages|selectattr('status', 'equalto', "
    "'In Progress')|list|length }}\n- Blocked: {{ work_packages|selectattr('status', 'equalto', "
    "'Blocked')|list|length }}"
)


def render_bundled(name: str, context: dict[str, Any]) -> RenderResult:
    source = bundled_template(name)
    assert source is not None
    return render_template(name, source, context)


def test_weekly_report_counts_by_status(context: dict[str, Any]) -> None:
    result = render_bundled("weekly_report.j2", context)

    text = result.text
    assert text.startswith("# Apollo Weekly Report\n")
    assert "**Work packages**: 7 total, 5 open, 2 done" in text
    for line in ("- In Progress: 3", "- Completed: 2", "- Blocked: 1", "- New: 1"):
        assert f"\n{line}\n" in text
    assert "## Overdue (2)" in text
    assert "- #3 Build client (In Progress), due 2026-11-18, Cy" in text
    assert "- #4 Load test (In Progress), due 2026-11-22, unassigned" in text
    assert "## Unassigned (2)" in text
    assert "- #6 Security review (Blocked)\n" in text
    assert "_Generated 2026-11-23 09:30 UTC._" in text
    assert result.undefined == []


def test_executive_summary_counts_by_status(context: dict[str, Any]) -> None:
    result = render_bundled("executive_summary.j2", context)

    text = result.text
    assert "**Progress**: 2 of 7 tasks done, 5 open" in text
    for line in (
        "- In Progress: 3",
        "- Completed: 2",
        "- Blocked: 1",
        "- New: 1",
        "- Overdue: 2",
        "- Unassigned: 2",
    ):
        assert f"\n{line}\n" in text
    assert "## Needs Attention" in text
    assert text.index("Build client") < text.index("Load test")  # soonest due first
    assert result.undefined == []


def test_bundled_templates_render_an_empty_week() -> None:
    from worker.reports import build_context

    context = build_context({"project": {"id": 1, "name": "Quiet"}, "work_packages": []}, "2026-W01")
    weekly = render_bundled("weekly_report.j2", context).text
    summary = render_bundled("executive_summary.j2", context).text

    assert "- No work packages this week." in weekly
    assert "- Nothing overdue." in weekly
    assert "**Progress**: 0 of 0 tasks done" in summary
    assert "Needs Attention" not in summary


def test_seed_executive_summary_renders_unchanged(context: dict[str, Any]) -> None:
    result = render_template("executive_summary.j2", SEED_EXECUTIVE_SUMMARY, context)

    assert result.text == (
        "# Executive Summary\n\n**Project**: Apollo\n**Progress**: 7 tasks total\n\n## Key Metrics\n"
        "- Completed: 2\n- In Progress: 3\n- Blocked: 1"
    )
    assert result.undefined == []


def test_seed_weekly_report_renders_unchanged(context: dict[str, Any]) -> None:
    result = render_template("weekly_report.j2", SEED_WEEKLY_REPORT, context)

    assert result.text.startswith(
        "# Apollo Weekly Report\n\n**Week**: 2026-W47\n\n## Tasks\n- Design API (Completed)\n"
    )
    assert result.text.count("\n- ") == 7


def test_bundled_template_lookup() -> None:
    assert BUNDLED_TEMPLATE_NAMES == ("weekly_report.j2", "executive_summary.j2")
    for name in BUNDLED_TEMPLATE_NAMES:
        source = bundled_template(name)
        assert source is not None
        compile_template(name, source)
    assert bundled_template("weekly_report") == bundled_template("weekly_report.j2")
    assert bundled_template("nope.j2") is None
    assert bundled_template("../render.py") is None


def test_syntax_error_names_template_and_line() -> None:
    source = "# Title\n\n{% for task in work_packages %}\n- {{ task.subject }\n{% endfor %}"

    with pytest.raises(TemplateError) as info:
        compile_template("broken.j2", source)

    message = str(info.value)
    assert message.startswith("template 'broken.j2' line 4: syntax error:")
    assert "\n" not in message
    with pytest.raises(TemplateError, match=r"^template 'broken.j2' line 4: syntax error"):
        render_template("broken.j2", source, {})


def test_unknown_filter_is_a_compile_error() -> None:
    with pytest.raises(
        TemplateError, match=r"^template 't.j2' line 2: syntax error: No filter named 'shout'"
    ):
        compile_template("t.j2", "ok\n{{ project.name|shout }}")


def test_render_error_names_template_and_line() -> None:
    with pytest.raises(
        TemplateError, match=r"^template 'div.j2' line 3: ZeroDivisionError: division by zero$"
    ):
        render_template("div.j2", "one\ntwo\n{{ total / 0 }}", {"total": 3})


def test_error_inside_a_macro_names_the_macro_line() -> None:
    source = "{% macro share(n) %}\n{{ n / 0 }}\n{% endmacro %}\n\n{{ share(1) }}"

    with pytest.raises(TemplateError, match=r"^template 'm.j2' line 2: ZeroDivisionError"):
        render_template("m.j2", source, {})


def test_undefined_names_render_empty_and_are_reported(context: dict[str, Any]) -> None:
    source = (
        "[{{ owner }}][{{ owner.name }}][{{ budget['q1'].total }}][{{ project.sponsor }}]"
        "[{{ project.name }}][{{ owner }}][{{ work_packages[99] }}]"
    )

    result = render_template("u.j2", source, context)

    assert result.text == "[][][][][Apollo][][]"
    assert result.undefined == ["owner", "budget", "dict.sponsor", "list[99]"]


def test_undefined_value_used_in_arithmetic_is_a_template_error() -> None:
    with pytest.raises(
        TemplateError, match=r"^template 'a.j2' line 1: undefined value: 'missing' is undefined"
    ):
        render_template("a.j2", "{{ missing + 1 }}", {})


def test_render_does_not_change_the_context(context: dict[str, Any]) -> None:
    before = repr(context)
    render_template("ns.j2", "{% set total = 99 %}{% set project = 'x' %}{{ total }}", context)
    assert repr(context) == before


def test_include_import_and_extends_are_refused() -> None:
    for source in ("{% include 'weekly_report.j2' %}", "{% import 'x.j2' as x %}", "{% extends 'x.j2' %}"):
        with pytest.raises(TemplateError, match="cannot include, import or extend"):
            render_template("inc.j2", source, {})


def test_the_task_time_limit_is_not_turned_into_a_template_error() -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    class Slow:
        @property
        def value(self) -> str:
            raise SoftTimeLimitExceeded()

    with pytest.raises(SoftTimeLimitExceeded):
        render_template("slow.j2", "{{ slow.value }}", {"slow": Slow()})
