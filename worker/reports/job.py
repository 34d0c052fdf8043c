"""Generating one report: the logic behind `mcp.generate_report`, testable without Celery.

Steps: the data tool call (recorded as the `mcp_executions` row of this task id, so a retried
report does not call the server again once the data is in), the template (database, else
bundled), the sandboxed render, the optional refinement, and one `mcp_reports` row per task id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker import executions
from worker.db import session_scope
from worker.errors import InvalidArguments, WorkerError
from worker.execute import run_tool_call
from worker.redaction import redact
from worker.registry import resolve
from worker.reports.refine import RefineOutcome, refine_report, required_facts
from worker.reports.render import build_context, render_template
from worker.reports.storage import insert_report, load_template, report_for_task
from worker.schedule_math import last_complete_iso_week
from worker.scheduling import record_outcome
from worker.settings import Settings, get_settings
from worker.validation import validate_report_request, validate_tool_request

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "weekly_report.j2"
DEFAULT_DATA_TOOL = "fetch_weekly_report"


@dataclass(frozen=True)
class ReportResult:
    report_id: int
    task_id: str
    period: str
    refined: bool
    refine_error: str | None
    created: bool

    def summary(self) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "task_id": self.task_id,
            "period": self.period,
            "refined": self.refined,
            "refine_error": self.refine_error,
            "created": self.created,
        }


def _refine(raw: str, context: dict[str, Any], wanted: bool, settings: Settings) -> RefineOutcome:
    if not wanted:
        return RefineOutcome(text=raw, refined=False, model=None, error=None, usage=None)
    return refine_report(raw, settings=settings, facts=required_facts(raw, context))


def generate_report(
    *,
    task_id: str,
    user_id: object,
    service: object,
    template: object = None,
    period: object = None,
    refine: object = None,
    schedule_id: int | None = None,
    final_attempt: bool,
    settings: Settings | None = None,
) -> ReportResult:
    """Fetch the data, render, refine and store the report for this task id (once).

    A scheduled report's final outcome is counted on its schedule (failures in a row disable it).

    Raises:
        InvalidArguments: malformed request (nothing is written).
        PermanentError: recorded on the execution row (template errors included).
        TransientError: the data call may succeed later; the task retries it.
    """
    try:
        result = _generate(
            task_id=task_id,
            user_id=user_id,
            service=service,
            template=template,
            period=period,
            refine=refine,
            schedule_id=schedule_id,
            final_attempt=final_attempt,
            settings=settings,
        )
    except WorkerError as exc:
        if schedule_id is not None and (final_attempt or not exc.retryable):
            record_outcome(schedule_id, exc)
        raise
    if schedule_id is not None and result.created:
        record_outcome(schedule_id, None)
    return result


def _generate(
    *,
    task_id: str,
    user_id: object,
    service: object,
    template: object = None,
    period: object = None,
    refine: object = None,
    schedule_id: int | None = None,
    final_attempt: bool,
    settings: Settings | None = None,
) -> ReportResult:
    settings = settings or get_settings()
    user, desc, _, _ = validate_tool_request(
        user_id, service, DEFAULT_DATA_TOOL, {}, max_argument_bytes=settings.max_argument_bytes
    )
    template_name, period_name, refine_flag = validate_report_request(template, period, refine)
    with session_scope() as session:
        existing = report_for_task(session, task_id)
        if existing is not None:
            logger.info("report %s already stored for this task; returning it", existing.id)
            return ReportResult(
                existing.id, task_id, existing.period, existing.refined, existing.refine_error, False
            )

    period_name = period_name or last_complete_iso_week(datetime.now(UTC))
    config = resolve(user, desc)
    data_tool = str(config.params.get("report_tool") or DEFAULT_DATA_TOOL)
    wanted = refine_flag if refine_flag is not None else bool(config.params.get("refine", False))
    call = run_tool_call(
        task_id=task_id,
        user_id=user,
        service=desc,
        tool=data_tool,
        arguments={"week": period_name},
        final_attempt=final_attempt,
        settings=settings,
    )
    name = template_name or DEFAULT_TEMPLATE
    try:
        with session_scope() as session:
            source = load_template(session, name)
        if not isinstance(call.result, dict):
            raise InvalidArguments(
                f"data tool {data_tool!r} returned {type(call.result).__name__}, not an object with work_packages"
            )
        context = build_context(call.result, period_name)
        rendered = render_template(name, source.content, context)
    except WorkerError as exc:
        message = redact(f"{type(exc).__name__}: {exc}")
        with session_scope() as session:
            executions.fail(
                session, task_id, message=message, elapsed_ms=None, final=True, override_success=True
            )
        raise
    outcome = _refine(rendered.text, context, wanted, settings)
    usage = outcome.usage or {}
    with session_scope() as session:
        report_id = insert_report(
            session,
            {
                "task_id": task_id,
                "user_id": user,
                "service": desc,
                "template": name,
                "period": period_name,
                "content": outcome.text,
                "raw_content": rendered.text,
                "refined": outcome.refined,
                "refine_model": outcome.model,
                "refine_error": outcome.error,
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "total_tokens": usage.get("total_tokens"),
                "undefined_names": list(rendered.undefined),
                "execution_id": call.execution_id,
                "schedule_id": schedule_id,
            },
        )
    logger.info(
        "report %s stored for %s/%s %s (refined=%s)", report_id, user, desc, period_name, outcome.refined
    )
    return ReportResult(report_id, task_id, period_name, outcome.refined, outcome.error, True)
