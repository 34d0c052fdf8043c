"""Running one audited tool call: the logic behind `mcp.execute_tool`, testable without Celery.

Order of work, no connection or transaction held while the MCP server thinks: claim the row (or
find it already succeeded) and fetch the service's rows, one statement on PostgreSQL (two on
SQLite); call the tool; record the outcome, one statement. The hot path's steps run in
autocommit: each is a single write, so a BEGIN and a COMMIT would only add round trips. Errors
are recorded and re-raised for the task to map onto retry (a `TransientError` that has retries
left) or failure.

While the call runs its thread passes on the server's progress and stops the call when it was
cancelled (`worker.execution.watch`). A tool the server runs as an MCP task ends this delivery
once the task is started, and a server that needs input ends it too (`worker.execution.pending`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError

from worker import mcp
from worker.db.engine import autocommit, session_scope
from worker.errors import (
    CallCancelled,
    ExecutionHeld,
    PermanentError,
    ToolFailed,
    TransientError,
    WorkerError,
)
from worker.execution import audit, leases, pauses, pending, slots
from worker.execution.claim import Claim, claim
from worker.execution.watch import CallWatch, ProgressReporter
from worker.redaction import redact, redact_params, register_secrets
from worker.services import registry
from worker.services.config import ServiceConfig, Timeouts, timeouts_for
from worker.settings import Settings, get_settings
from worker.validation import validate_tool_request

logger = logging.getLogger(__name__)

SUMMARY_CHARS = 200
# Exponential backoff with full jitter for transient failures (the tasks' retry policy). A
# `retrying` row expects its retry within the cap; past it (and the time a lost message takes to
# come back) the retry is taken as lost (`audit.stuck`).
RETRY_BACKOFF_S = 2
RETRY_BACKOFF_MAX_S = 120
# How often a duplicate delivery looks at the row another delivery holds.
HOLDER_POLL_S = 0.5

# A message header: this delivery carries the answers `mcp-worker executions respond` stored.
RESUME_HEADER = "mcp_resume"


@dataclass(frozen=True)
class CallResult:
    """What a finished call returns to the task (and so to the producer): small, no secrets."""

    execution_id: int
    task_id: str
    status: str
    result: Any
    execution_time_ms: int | None
    attempts: int
    cached: bool = False
    # The result's JSON when it was already encoded (for the row), so the summary does not redo it.
    encoded: str | None = None

    def summary(self) -> dict[str, Any]:
        text = (
            self.encoded
            if self.encoded is not None
            else json.dumps(self.result, ensure_ascii=False, default=str)
        )
        return {
            "execution_id": self.execution_id,
            "task_id": self.task_id,
            "status": self.status,
            "attempts": self.attempts,
            "execution_time_ms": self.execution_time_ms,
            "cached": self.cached,
            "result_summary": text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS] + "...",
        }


def merge_arguments(config: ServiceConfig, arguments: dict[str, Any]) -> dict[str, Any]:
    """The service's default params overlaid with the call's arguments (the call's win)."""
    return {**config.tool_defaults, **arguments}


def _wait_for_holder(task_id: str, begun: audit.Begun, give_up_at: float) -> CallResult | None:
    """Another delivery of this task holds the row: wait for its outcome and return it, or
    return None once its lease has run out (the holder died) so the caller claims the row.

    Raises:
        PermanentError: the holder's attempt ended in a final error.
        ExecutionHeld: the lease outlasts `give_up_at` (monotonic), after which this delivery
            could no longer fit a call in its soft time limit.
    """
    logger.info(
        "execution %s is held by another delivery until %s; waiting for it", begun.id, begun.held_until
    )
    held_until = begun.held_until
    while True:
        lease_left = (held_until - datetime.now(UTC)).total_seconds() if held_until else 0.0
        if time.monotonic() + lease_left > give_up_at:
            # If the holder is dead, claiming at the end of its lease would leave this delivery no
            # time for the call: come back then, with a fresh time limit.
            raise ExecutionHeld(
                f"execution {begun.id} is held by another delivery until {held_until}",
                retry_after=max(lease_left, 0.0) + HOLDER_POLL_S,
            )
        time.sleep(HOLDER_POLL_S)
        with session_scope() as session:
            status, result, error, attempts, held_until = audit.outcome(session, task_id)
        if status == audit.Status.SUCCESS:
            return CallResult(begun.id, task_id, "success", result, None, attempts or 0, True)
        if status == audit.Status.ERROR:
            raise PermanentError(f"another delivery of this task failed: {error}")
        if status == audit.Status.RETRYING:
            # The holder failed transiently and its retry is already scheduled: nothing to add.
            return CallResult(begun.id, task_id, "retrying", None, None, attempts or 0, True)
        if held_until is None or held_until < datetime.now(UTC):
            return None


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _owner(task_id: str) -> str:
    """Stable for this task in this process and thread: a retry that lands here after a database
    outage reclaims its own lease at once; any other copy of the task must wait it out."""
    where = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{task_id}"
    return hashlib.sha256(where.encode()).hexdigest()[:32]


def _claim_deadline(started: float, user: str, desc: str, settings: Settings) -> float:
    """The last moment (monotonic) this delivery may claim the row and still fit a call to the
    service, with the service's own timeouts, inside its soft time limit."""
    try:
        timeouts = timeouts_for(registry.resolve(user, desc), settings)
    except WorkerError:
        # The claim will record why the service cannot be used; any budget will do until then.
        timeouts = Timeouts(settings.connect_timeout, settings.call_timeout)
    return started + settings.task_soft_time_limit - timeouts.bound


def record_failure(
    task_id: str,
    message: str,
    *,
    started: float | None,
    final: bool,
    params: Any = None,
    owner: str | None = None,
    override_success: bool = False,
) -> None:
    """Persist one failed attempt of the call: `error` when `final`, else `retrying` (only while
    `owner`, when given, holds the lease; `override_success`: a report whose data call succeeded
    but whose rendering then failed)."""
    elapsed = _elapsed_ms(started) if started is not None else None
    with session_scope() as session:
        recorded = audit.fail(
            session,
            task_id,
            message=message,
            elapsed_ms=elapsed,
            final=final,
            params=params,
            owner=owner,
            retry_within=RETRY_BACKOFF_MAX_S,
            override_success=override_success,
        )
    if not recorded:
        logger.warning("the row of task %s was taken over by another delivery; its outcome stands", task_id)


def _claim_or_wait(task_id: str, values: dict[str, Any], settings: Settings) -> Claim | CallResult:
    """This attempt's claim on the row, or the outcome of the delivery that holds it."""
    started = time.monotonic()
    give_up_at: float | None = None
    while True:
        # No transaction: the claim, with the service lookup, is one statement on PostgreSQL.
        claimed = autocommit(lambda connection: claim(connection, values, settings))
        row = claimed.row
        if row.already_succeeded:
            logger.info("execution %s already succeeded; returning the stored result", row.id)
            return CallResult(
                row.id, task_id, "success", row.result, row.execution_time_ms, row.attempts, True
            )
        if row.cancelled:
            raise CallCancelled(f"execution {row.id} was cancelled; it is not run again")
        if claimed.claimed:
            return claimed
        if give_up_at is None:
            give_up_at = _claim_deadline(started, values["b_user_id"], values["b_service"], settings)
        held = _wait_for_holder(task_id, row, give_up_at)
        if held is not None:
            return held


def run_tool_call(
    *,
    task_id: str,
    user_id: object,
    service: object,
    tool: object,
    arguments: object,
    final_attempt: bool,
    settings: Settings | None = None,
    on_progress: ProgressReporter | None = None,
    resume: bool = False,
) -> CallResult:
    """Call `tool` on the user's `service` and keep the audit row current; the server's progress
    goes to the row and to `on_progress` (throttled, see `WATCH_INTERVAL_S`). `resume`: the call
    asked for input and `mcp-worker executions respond` stored the answers on the row.

    Raises:
        InvalidArguments: the request itself is malformed (no row is written).
        CallCancelled: the call was cancelled (the row says `cancelled`); never retried.
        PermanentError: recorded as `error`; retrying cannot help.
        TransientError: recorded as `retrying`, or `error` when `final_attempt`.
        ExecutionHeld: another delivery holds the row longer than this one can wait.
    """
    settings = settings or get_settings()
    user, desc, name, args = validate_tool_request(
        user_id, service, tool, arguments, max_argument_bytes=settings.max_argument_bytes
    )
    values = audit.claim_values(
        task_id=task_id,
        user_id=user,
        service=desc,
        tool=name,
        params=redact_params(args),
        owner=_owner(task_id),
        lease_seconds=settings.lease_seconds,
    )
    claimed = _claim_or_wait(task_id, values, settings)
    if isinstance(claimed, CallResult):
        return claimed
    watch = CallWatch(task_id, values["b_owner"], settings, on_progress)
    with leases.kept(task_id, values["b_owner"], settings.lease_seconds):
        return _call(claimed, values, name, args, final_attempt, settings, watch, resume)


def _call(
    claimed: Claim,
    values: dict[str, Any],
    name: str,
    args: dict[str, Any],
    final_attempt: bool,
    settings: Settings,
    watch: CallWatch,
    resume: bool = False,
) -> CallResult:
    """The claimed attempt: call the tool and persist its outcome, whatever it is."""
    row, task_id, owner = claimed.row, values["b_task_id"], values["b_owner"]
    started = time.perf_counter()
    stored_params: Any = None
    try:
        config = claimed.config()
        register_secrets(config.secrets())
        merged = merge_arguments(config, args)
        stored_params = redact_params(merged, config.secrets())
        outcome = _reach(config, name, merged, row, task_id, owner, settings, watch, resume)
        if outcome is None:
            return CallResult(row.id, task_id, audit.Status.INPUT_REQUIRED.value, None, None, row.attempts)
        if outcome.is_error:
            raise ToolFailed(f"tool {name!r} reported an error: {outcome.message or 'no message'}")
        result, encoded = audit.encode_result(
            redact_params(outcome.result, config.secrets()), settings.max_result_bytes
        )
    except ExecutionHeld as held:  # no free slot (the claim goes back), or a server's task to poll later
        if isinstance(held, slots.SlotBusy):
            _give_back(task_id, owner, held)
        raise
    except CallCancelled as cancelled:
        watch.flush(final=True)
        _record_cancel(task_id, owner, started, cancelled)
        raise
    except WorkerError as exc:
        final = final_attempt or not isinstance(exc, TransientError)
        message = redact(f"{type(exc).__name__}: {exc}")
        record_failure(task_id, message, started=started, final=final, params=stored_params, owner=owner)
        kind = "final" if final else "retry"
        logger.warning("execution %s attempt %d failed (%s): %s", row.id, row.attempts, kind, message)
        raise
    except SoftTimeLimitExceeded:
        message = f"ServerTimeout: the task's soft time limit ({settings.task_soft_time_limit} s) ran out"
        record_failure(task_id, message, started=started, final=True, params=stored_params, owner=owner)
        raise
    except DBAPIError:
        # The database went away: nothing can be recorded now; the task retries, and its retry
        # reclaims this row (same owner) or, elsewhere, waits out the lease.
        logger.warning("execution %s could not reach the database; the task will retry", row.id)
        raise
    except Exception as exc:
        # Anything unclassified is a bug or a failure mode we have not met: record it, never lose it.
        message = redact(f"unexpected {type(exc).__name__}: {exc}")
        record_failure(task_id, message, started=started, final=True, params=stored_params, owner=owner)
        logger.exception("execution %s failed unexpectedly", row.id)
        raise
    return _record_success(row, values, result, encoded, _elapsed_ms(started), stored_params, outcome)


def _reach(
    config: ServiceConfig,
    name: str,
    merged: dict[str, Any],
    row: audit.Begun,
    task_id: str,
    owner: str,
    settings: Settings,
    watch: CallWatch,
    resume: bool,
) -> mcp.ToolOutcome | None:
    """The tool's outcome, holding one of the service's slots: the server's task polled, or the
    call made (with the stored answers when `resume`); None when the server needs input first.

    Raises:
        TaskPending: the server's task runs on (`worker.execution.pending`).
        SlotBusy: no slot came free in time.
    """
    with slots.held(config, task_id, settings):
        if row.server_task_id is not None:
            return pending.poll(config, name, row.server_task_id, task_id, owner, settings)
        answers, state = pending.answers(task_id) if resume else (None, None)
        started = mcp.start_tool(
            config, name, merged, settings=settings, watch=watch, answers=answers, request_state=state
        )
        # While this delivery still holds the row: settling a pause lets go of it.
        watch.flush(final=True)
        return pending.settled(started, task_id, owner, row.id, config)


def _record_cancel(task_id: str, owner: str, started: float, cancelled: CallCancelled) -> None:
    message = f"CallCancelled: {cancelled} (after {_elapsed_ms(started)} ms)"
    if not autocommit(lambda connection: pauses.cancel(connection, task_id, message=message, owner=owner)):
        logger.warning("the row of task %s was taken over by another delivery; its outcome stands", task_id)
    logger.info("task %s was cancelled while its call ran; the server was told to stop", task_id)


def _give_back(task_id: str, owner: str, busy: slots.SlotBusy) -> None:
    """The call found no slot and goes back to the queue: so does its claim on the row."""
    message = f"waiting for a slot: {busy}"
    given = autocommit(
        lambda connection: audit.give_back(
            connection, task_id, owner=owner, message=message, retry_within=RETRY_BACKOFF_MAX_S
        )
    )
    if not given:
        logger.warning("the row of task %s was taken over by another delivery; its outcome stands", task_id)
    logger.info("%s; task %s goes back to the queue", busy, task_id)


def _record_success(
    row: audit.Begun,
    values: dict[str, Any],
    result: Any,
    encoded: str,
    elapsed: int,
    stored_params: Any,
    outcome: mcp.ToolOutcome,
) -> CallResult:
    task_id, owner = values["b_task_id"], values["b_owner"]
    # A row this attempt created already holds these params when no service default was merged.
    new_params = None if row.attempts == 1 and stored_params == values["b_params"] else stored_params
    recorded = autocommit(
        lambda connection: audit.succeed(
            connection,
            task_id,
            result=result,
            elapsed_ms=elapsed,
            owner=owner,
            params=new_params,
            encoded=encoded,
            output_valid=outcome.output_valid,
            output_error=outcome.output_error,
        )
    )
    if not recorded:
        logger.warning("execution %s was taken over by another delivery; its outcome stands", row.id)
    return CallResult(row.id, task_id, "success", result, elapsed, row.attempts, encoded=encoded)
