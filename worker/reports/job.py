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

from worker.db.engine import session_scope
from worker.delivery.job import channels_for, schedule_deliveries, user_channels
from worker.errors import ExecutionHeld, InvalidArguments, WorkerError
from worker.execution.call import CallResult, record_failure, run_tool_call
from worker.redaction import redact
from worker.reports.changes import previous_changes
from worker.reports.refine import RefineOutcome, refine_report, required_facts
from worker.reports.render import RenderResult, build_context, render_template
from worker.reports.storage import insert_report, load_template, report_for_task
from worker.scheduling.cron import last_complete_iso_week
from worker.scheduling.schedules import record_outcome
from worker.services.registry import resolve
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
    deliver: object = None,
    final_attempt: bool,
    settings: Settings | None = None,
) -> ReportResult:
    """Fetch the data, render, refine and store the report for this task id (once), then queue
    its deliveries: through the schedule's channels, or (`deliver`, a one-off report) through
    those of the user's schedules of this service.

    A scheduled report's final outcome is counted on its schedule (failures in a row disable it).

    Raises:
        InvalidArguments: malformed request (nothing is written).
        PermanentError: recorded on the execution row (template errors included).
        TransientError: the data call may succeed later; the task retries it.
    """
    settings = settings or get_settings()
    if deliver is not None and not isinstance(deliver, bool):
        raise InvalidArguments(f"deliver must be true or false, got {type(deliver).__name__}")
    try:
        result = _generate(
            task_id,
            _request(user_id, service, template, period, refine, settings),
            schedule_id,
            final_attempt,
            settings,
        )
    except ExecutionHeld:
        raise  # another delivery is running this report: not an outcome of the schedule
    except WorkerError as exc:
        if schedule_id is not None and (final_attempt or not exc.retryable):
            record_outcome(schedule_id, exc)
        raise
    if schedule_id is not None and result.created:
        record_outcome(schedule_id, None)
    _queue_deliveries(result.report_id, schedule_id, deliver, user_id, service)
    return result


def _queue_deliveries(
    report_id: int, schedule_id: int | None, deliver: object, user_id: object, service: object
) -> None:
    """The report's deliveries, logged and queued after its row is committed (again on a retried
    task: rows already logged are kept, and a row already sent is not sent again)."""
    sources = [schedule_id] if schedule_id is not None else []
    if deliver and schedule_id is None:
        sources = user_channels(str(user_id), str(service))
    items = channels_for(sources)
    if items:
        schedule_deliveries(report_id, items)


def _plan(user: str, desc: str, refine_flag: bool | None) -> tuple[str, bool]:
    """The service's data tool and whether to refine. A service that cannot be resolved gets the
    defaults: `run_tool_call` then claims the execution row, records why, and raises."""
    try:
        config = resolve(user, desc)
    except WorkerError:
        return DEFAULT_DATA_TOOL, bool(refine_flag)
    data_tool = str(config.params.get("report_tool") or DEFAULT_DATA_TOOL)
    wanted = refine_flag if refine_flag is not None else bool(config.params.get("refine", False))
    return data_tool, wanted


def _render(
    task_id: str, request: ReportRequest, name: str, call: CallResult, data_tool: str, period: str
) -> tuple[RenderResult, dict[str, Any]]:
    """The template `name` rendered over the data call's result; a failure is recorded on the
    execution row (whose data call succeeded) as final."""
    user, desc = request.user, request.service
    try:
        with session_scope() as session:
            source = load_template(session, name)
        if not isinstance(call.result, dict):
            raise InvalidArguments(
                f"data tool {data_tool!r} returned {type(call.result).__name__}, not an object with work_packages"
            )
        context = build_context(call.result, period)
        with session_scope() as session:
            context["changes"] = previous_changes(
                session,
                user=user,
                service=desc,
                template=name,
                period=period,
                current=context["work_packages"],
            )
        return render_template(name, source.content, context), context
    except WorkerError as exc:
        message = redact(f"{type(exc).__name__}: {exc}")
        record_failure(task_id, message, started=None, final=True, override_success=True)
        raise


@dataclass(frozen=True)
class ReportRequest:
    """A report request as checked: who, which service, and the optional template, week, refine."""

    user: str
    service: str
    template: str | None
    period: str | None
    refine: bool | None


def _request(
    user_id: object, service: object, template: object, period: object, refine: object, settings: Settings
) -> ReportRequest:
    user, desc, _, _ = validate_tool_request(
        user_id, service, DEFAULT_DATA_TOOL, {}, max_argument_bytes=settings.max_argument_bytes
    )
    return ReportRequest(user, desc, *validate_report_request(template, period, refine))


def _generate(
    task_id: str, request: ReportRequest, schedule_id: int | None, final_attempt: bool, settings: Settings
) -> ReportResult:
    user, desc = request.user, request.service
    with session_scope() as session:
        existing = report_for_task(session, task_id)
        if existing is not None:
            logger.info("report %s already stored for this task; returning it", existing.id)
            return ReportResult(
                existing.id, task_id, existing.period, existing.refined, existing.refine_error, False
            )

    period_name = request.period or last_complete_iso_week(datetime.now(UTC))
    data_tool, wanted = _plan(user, desc, request.refine)
    call = run_tool_call(
        task_id=task_id,
        user_id=user,
        service=desc,
        tool=data_tool,
        arguments={"week": period_name},
        final_attempt=final_attempt,
        settings=settings,
    )
    name = request.template or DEFAULT_TEMPLATE
    rendered, context = _render(task_id, request, name, call, data_tool, period_name)
    outcome = _refine(rendered.text, context, wanted, settings)
    report_id = _store(task_id, user, desc, name, period_name, rendered, outcome, call, schedule_id)
    logger.info(
        "report %s stored for %s/%s %s (refined=%s)", report_id, user, desc, period_name, outcome.refined
    )
    return ReportResult(report_id, task_id, period_name, outcome.refined, outcome.error, True)


def _store(
    task_id: str,
    user: str,
    desc: str,
    name: str,
    period: str,
    rendered: RenderResult,
    outcome: RefineOutcome,
    call: CallResult,
    schedule_id: int | None,
) -> int:
    usage = outcome.usage or {}
    with session_scope() as session:
        return insert_report(
            session,
            {
                "task_id": task_id,
                "user_id": user,
                "service": desc,
                "template": name,
                "period": period,
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
