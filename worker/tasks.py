"""Celery tasks: thin wrappers that coerce arguments, call a plain function, map errors.

Names are the producer contract (DESIGN.md); payloads are JSON and carry no secrets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from celery import Task, states
from celery.exceptions import Ignore, TaskRevokedError, WorkerLostError
from celery.signals import task_postrun, task_revoked
from celery.worker.request import Request
from sqlalchemy.exc import InterfaceError, OperationalError

import worker.ops.lifecycle
import worker.ops.logs  # noqa: F401  (connects the logging signals)
from worker import fairness, names
from worker.celery import app
from worker.delivery.limits import time_limit as delivery_time_limit
from worker.delivery.request import ClaimFreeingRequest
from worker.errors import CallCancelled, ExecutionHeld, TransientError
from worker.execution import cancel, leases, slots
from worker.execution.call import RESUME_HEADER, RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S, run_tool_call
from worker.settings import get_settings

logger = logging.getLogger(__name__)
_settings = get_settings()


# Transient MCP failures, and the database going away under a task (its rows are written again
# when the retry runs).
RETRY_ON = (TransientError, OperationalError, InterfaceError)


class LeaseFreeingRequest(Request):
    """A task request whose main process frees the execution lease of a task whose pool process
    died (SIGKILL, OOM), before the message goes back to the queue: the redelivery claims the row
    at once instead of waiting for the dead holder's lease to run out."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # ExceptionWithTraceback
        # Billiard reports a killed child as WorkerLostError, or as its exit (SystemExit).
        if isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt):
            try:
                if leases.release_lost(self.id):
                    logger.info("task %s lost its pool process; its execution lease is freed", self.id)
            except Exception:
                logger.exception("could not free the lease of task %s; it runs out on its own", self.id)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


# The options both MCP-calling tasks share: transient failures retry with backoff and jitter.
RETRYING: dict[str, Any] = {
    "autoretry_for": RETRY_ON,
    "retry_backoff": RETRY_BACKOFF_S,
    "retry_backoff_max": RETRY_BACKOFF_MAX_S,
    "retry_jitter": True,
    "max_retries": _settings.max_retries,
    "Request": LeaseFreeingRequest,
}


def _final_attempt(task: Task) -> bool:
    return int(task.request.retries or 0) >= int(task.max_retries or 0)


# A message header: how many times the call was re-queued for want of a service slot.
REQUEUED_HEADER = "mcp_requeued"


def _defer(task: Task, held: ExecutionHeld) -> NoReturn:
    """Another delivery's lease outlasts this one's time budget, or the service has no free slot:
    run again later. Not a failed attempt, so it does not count against max_retries (nor against
    a schedule). The message keeps its priority (`worker.fairness`)."""
    headers = dict(task.request.headers or {})
    delay = held.retry_after
    if isinstance(held, slots.SlotBusy):
        requeued = int(headers.get(REQUEUED_HEADER) or 0)
        delay = slots.requeue_delay(requeued)
        headers[REQUEUED_HEADER] = requeued + 1
    logger.info("%s; deferring this delivery by %.1f s", held, delay)
    task.signature_from_request(countdown=delay, retries=task.request.retries, headers=headers).apply_async()
    raise Ignore()


def _run(task: Task, work: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """`work` for this delivery of `task`, its outcome's summary as the task's result."""
    try:
        outcome = work(task_id=task.request.id, final_attempt=_final_attempt(task), **kwargs)
    except ExecutionHeld as held:
        _defer(task, held)
    except CallCancelled as cancelled:
        _revoked(task, cancelled)
    return outcome.summary()


# The task state while the server reports progress: meta is {"progress", "total", "message"}.
PROGRESS_STATE = "PROGRESS"


def _revoked(task: Task, cancelled: CallCancelled) -> NoReturn:
    """The call was cancelled: the task ends REVOKED, as Celery's own revoke leaves it, and is
    never retried (the row says `cancelled`)."""
    logger.info("task %s cancelled: %s", task.request.id, cancelled)
    task.update_state(state=states.REVOKED, meta=TaskRevokedError(str(cancelled)))
    raise Ignore()


# A call's end (success or final failure; not a retry, nor a re-queue for a slot, which Celery
# reports as RETRY and IGNORED) counts it off its user's calls waiting (`worker.fairness`).
_ENDED = frozenset({states.SUCCESS, states.FAILURE})


@task_postrun.connect
def _count_off_ended_call(sender: Task | None = None, state: str | None = None, **_: Any) -> None:
    if sender is None or sender.name != names.EXECUTE_TOOL or state not in _ENDED:
        return
    request = sender.request
    if (request.headers or {}).get(fairness.FAIR_HEADER) and isinstance(request.kwargs, dict):
        fairness.count_off(str(request.kwargs.get("user_id")), _settings.broker_url)


@task_revoked.connect
def _end_revoked_call(
    sender: Task | None = None, request: Any = None, expired: bool = False, **_: Any
) -> None:
    """A delivery of `mcp.execute_tool` that Celery dropped as revoked (Flower, `celery control
    revoke`) when it came due: a retry's countdown, or the next poll of a server's MCP task. No
    call runs that row, so it ends `cancelled` now, and the server's task is cancelled too, off
    the consumer's thread (the server may take its time to answer)."""
    if sender is None or sender.name != names.EXECUTE_TOOL or request is None:
        return
    task_id = str(request.id)
    why = (
        "CallCancelled: the task expired before it ran again"
        if expired
        else "CallCancelled: the task was revoked"
    )

    def end() -> None:
        try:
            ended, server_task = cancel.end_idle(task_id, why)
        except Exception:
            logger.exception("could not end the row of revoked task %s; the reaper ends it", task_id)
            return
        if ended:
            logger.info("task %s was revoked; its row is cancelled (server task: %s)", task_id, server_task)

    threading.Thread(target=end, name=f"revoked-{task_id}", daemon=True).start()


@app.task(
    name=names.EXECUTE_TOOL,
    bind=True,
    queue=names.TOOLS_QUEUE,
    **RETRYING,
    soft_time_limit=_settings.task_soft_time_limit,
    time_limit=_settings.task_time_limit,
    acks_late=True,
)
def execute_tool(
    self: Task, user_id: str, service: str, tool: str, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Call `tool` on the user's `service`; the full result lives in `mcp_executions`. While the
    server reports progress, the task's state is PROGRESS (throttled, `WATCH_INTERVAL_S`)."""

    def report(update: Any) -> None:
        self.update_state(state=PROGRESS_STATE, meta=update.as_dict())

    return _run(
        self,
        run_tool_call,
        user_id=user_id,
        service=service,
        tool=tool,
        arguments=arguments,
        on_progress=report,
        resume=bool((self.request.headers or {}).get(RESUME_HEADER)),
    )


@app.task(
    name=names.GENERATE_REPORT,
    bind=True,
    queue=names.REPORTS_QUEUE,
    **RETRYING,
    soft_time_limit=_settings.report_soft_time_limit,
    time_limit=_settings.report_time_limit,
    acks_late=True,
    # A report runs for seconds: a producer polling its result sees STARTED meanwhile.
    track_started=True,
)
def generate_report(
    self: Task,
    user_id: str,
    service: str,
    template: str | None = None,
    period: str | None = None,
    refine: bool | None = None,
    schedule_id: int | None = None,
    deliver: bool | None = None,
) -> dict[str, Any]:
    """Render (and optionally refine) the user's weekly report; returns the report id. Its
    deliveries (the schedule's channels, or with `deliver` the user's) are queued after it."""
    from worker.reports.job import generate_report as run_report

    return _run(
        self,
        run_report,
        user_id=user_id,
        service=service,
        template=template,
        period=period,
        refine=refine,
        schedule_id=schedule_id,
        deliver=deliver,
    )


@app.task(
    name=names.DELIVER_REPORT,
    bind=True,
    queue=names.REPORTS_QUEUE,
    max_retries=_settings.delivery_max_retries,
    soft_time_limit=delivery_time_limit(_settings),
    time_limit=delivery_time_limit(_settings) + 30,
    acks_late=True,
    Request=ClaimFreeingRequest,
)
def deliver_report(self: Task, delivery_id: int) -> dict[str, Any]:
    """Send one stored report through one channel (email, Slack, webhook) once; the delivery
    row (`mcp_report_deliveries`) says how it went. Transient failures retry with backoff."""
    from worker.delivery.errors import DeliveryUnavailable
    from worker.delivery.job import deliver, retry_delay

    try:
        return _run(self, deliver, delivery_id=delivery_id)
    except DeliveryUnavailable as exc:
        delay = retry_delay(int(self.request.retries or 0), exc.retry_after, _settings)
        raise self.retry(exc=exc, countdown=delay) from None
    except (OperationalError, InterfaceError) as exc:
        delay = retry_delay(int(self.request.retries or 0), None, _settings)
        raise self.retry(exc=exc, countdown=delay) from None


@app.task(
    name=names.DISPATCH_DUE_REPORTS,
    queue=names.SCHEDULE_QUEUE,
    soft_time_limit=50,
    time_limit=55,
    # A tick that could not finish is simply superseded by the next one a minute later.
    acks_late=False,
    ignore_result=True,
)
def dispatch_due_reports() -> dict[str, Any]:
    """Beat's every-minute tick: enqueue the report of every schedule whose slot has come."""
    from worker.scheduling.schedules import dispatch_due

    dispatched = dispatch_due()
    return {"dispatched": [d.task_id for d in dispatched]}


@app.task(
    name=names.PRUNE_OLD_RECORDS,
    queue=names.SCHEDULE_QUEUE,
    soft_time_limit=1800,
    time_limit=1860,
    # Each batch commits on its own; a run cut short simply continues tomorrow.
    acks_late=False,
    ignore_result=True,
)
def prune_old_records() -> dict[str, int]:
    """Beat's daily retention run: delete executions and reports older than MCP_RETENTION_DAYS."""
    from worker.ops.retention import prune

    return prune()


@app.task(
    name=names.REAP_STUCK_EXECUTIONS,
    queue=names.SCHEDULE_QUEUE,
    soft_time_limit=120,
    time_limit=150,
    acks_late=False,
    ignore_result=True,
)
def reap_stuck_executions() -> dict[str, int]:
    """Mark rows whose worker is gone for good (a lease long expired and no redelivery, or a
    retry that never came) as `error` with the reason, so no row stays `running` forever."""
    from worker.ops.health import find_stuck

    return {"marked_error": len(find_stuck(_settings, fix=True))}
