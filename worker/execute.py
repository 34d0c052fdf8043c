"""Running one audited tool call: the logic behind `mcp.execute_tool`, testable without Celery.

Order of work, no connection or transaction held while the MCP server thinks: claim the row (or
find it already succeeded) and fetch the service's rows, one statement on PostgreSQL (two on
SQLite); call the tool; record the outcome, one statement. The hot path's steps run in
autocommit: each is a single write, so a BEGIN and a COMMIT would only add round trips. Errors
are recorded and re-raised for the task to map onto retry (a `TransientError` that has retries
left) or failure.
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
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from worker import executions, mcp, registry
from worker.db import session_scope
from worker.errors import ExecutionHeld, PermanentError, ToolFailed, TransientError, WorkerError
from worker.redaction import redact, redact_params, register_secrets
from worker.registry import ServiceConfig
from worker.settings import CALL_MARGIN_S, Settings, get_settings
from worker.validation import validate_tool_request

logger = logging.getLogger(__name__)

SUMMARY_CHARS = 200
# How often a duplicate delivery looks at the row another delivery holds.
HOLDER_POLL_S = 0.5


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


def _wait_for_holder(task_id: str, begun: executions.Begun, give_up_at: float) -> CallResult | None:
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
            status, result, error, attempts, held_until = executions.outcome(session, task_id)
        if status == executions.Status.SUCCESS:
            return CallResult(begun.id, task_id, "success", result, None, attempts or 0, True)
        if status == executions.Status.ERROR:
            raise PermanentError(f"another delivery of this task failed: {error}")
        if status == executions.Status.RETRYING:
            # The holder failed transiently and its retry is already scheduled: nothing to add.
            return CallResult(begun.id, task_id, "retrying", None, None, attempts or 0, True)
        if held_until is None or held_until < datetime.now(UTC):
            return None


def _resolve(
    user: str, desc: str, connection: Connection, begun: executions.Begun
) -> ServiceConfig | Exception:
    """The service, or the error resolving it, for `run_tool_call` to record and raise with the
    rest of the call's failures (a database outage is raised at once: nothing can be recorded).
    The claim has usually fetched the service's rows already; otherwise they are looked up here."""
    try:
        if begun.looked_up is not None:
            return registry.from_rows(begun.looked_up, user, desc)
        return registry.resolve(user, desc, connection)
    except DBAPIError:
        logger.warning("execution %s could not reach the database; the task will retry", begun.id)
        raise
    except Exception as exc:
        return exc


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def run_tool_call(
    *,
    task_id: str,
    user_id: object,
    service: object,
    tool: object,
    arguments: object,
    final_attempt: bool,
    settings: Settings | None = None,
) -> CallResult:
    """Call `tool` on the user's `service` and keep the audit row current.

    Raises:
        InvalidArguments: the request itself is malformed (no row is written).
        PermanentError: recorded as `error`; retrying cannot help.
        TransientError: recorded as `retrying`, or `error` when `final_attempt`.
    """
    settings = settings or get_settings()
    # The last moment this delivery may claim the row and still fit a call in its soft time limit.
    budget = settings.task_soft_time_limit - settings.connect_timeout - settings.call_timeout - CALL_MARGIN_S
    give_up_at = time.monotonic() + budget
    user, desc, name, args = validate_tool_request(
        user_id, service, tool, arguments, max_argument_bytes=settings.max_argument_bytes
    )
    # Stable for this task in this process and thread: a retry that lands here after a database
    # outage reclaims its own lease at once; any other copy of the task must wait it out.
    owner = hashlib.sha256(
        f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{task_id}".encode()
    ).hexdigest()[:32]
    claimed_params = redact_params(args)

    def claim(connection: Connection) -> tuple[executions.Begun, ServiceConfig | Exception | None]:
        begun = executions.begin(
            connection,
            task_id=task_id,
            user_id=user,
            service=desc,
            tool=name,
            params=claimed_params,
            owner=owner,
            lease_seconds=settings.task_soft_time_limit,
            # Services come from a file in development mode.
            lookup=None if settings.development_mode else registry.LOOKUP,
        )
        return begun, _resolve(user, desc, connection, begun) if begun.claimed else None

    while True:
        # No transaction: the claim, with the service lookup, is one statement on PostgreSQL.
        begun, resolved = executions.autocommit(claim)
        if begun.already_succeeded:
            logger.info("execution %s already succeeded; returning the stored result", begun.id)
            return CallResult(
                begun.id, task_id, "success", begun.result, begun.execution_time_ms, begun.attempts, True
            )
        if begun.claimed:
            break
        held = _wait_for_holder(task_id, begun, give_up_at)
        if held is not None:
            return held

    started = time.perf_counter()
    stored_params: Any = None
    try:
        if isinstance(resolved, Exception):
            raise resolved
        assert resolved is not None  # looked up whenever the row was claimed
        config = resolved
        register_secrets(config.secrets())
        merged = merge_arguments(config, args)
        stored_params = redact_params(merged, config.secrets())
        outcome = mcp.call_tool(config, name, merged, settings=settings)
        if outcome.is_error:
            raise ToolFailed(f"tool {name!r} reported an error: {outcome.message or 'no message'}")
        result, encoded = executions.encode_result(
            redact_params(outcome.result, config.secrets()), settings.max_result_bytes
        )
    except WorkerError as exc:
        final = final_attempt or not isinstance(exc, TransientError)
        message = redact(f"{type(exc).__name__}: {exc}")
        with session_scope() as session:
            executions.fail(
                session,
                task_id,
                message=message,
                elapsed_ms=_elapsed_ms(started),
                final=final,
                params=stored_params,
            )
        logger.warning(
            "execution %s attempt %d failed (%s): %s",
            begun.id,
            begun.attempts,
            "final" if final else "retry",
            message,
        )
        raise
    except SoftTimeLimitExceeded:
        message = f"ServerTimeout: the task's soft time limit ({settings.task_soft_time_limit} s) ran out"
        with session_scope() as session:
            executions.fail(
                session,
                task_id,
                message=message,
                elapsed_ms=_elapsed_ms(started),
                final=True,
                params=stored_params,
            )
        raise
    except DBAPIError:
        # The database went away: nothing can be recorded now; the task retries, and its retry
        # reclaims this row (same owner) or, elsewhere, waits out the lease.
        logger.warning("execution %s could not reach the database; the task will retry", begun.id)
        raise
    except Exception as exc:
        # Anything unclassified is a bug or a failure mode we have not met: record it, never lose it.
        message = redact(f"unexpected {type(exc).__name__}: {exc}")
        with session_scope() as session:
            executions.fail(
                session,
                task_id,
                message=message,
                elapsed_ms=_elapsed_ms(started),
                final=True,
                params=stored_params,
            )
        logger.exception("execution %s failed unexpectedly", begun.id)
        raise
    elapsed = _elapsed_ms(started)
    # A row this attempt created already holds these params when no service default was merged.
    new_params = None if begun.attempts == 1 and stored_params == claimed_params else stored_params
    executions.autocommit(
        lambda connection: executions.succeed(
            connection, task_id, result=result, elapsed_ms=elapsed, params=new_params, encoded=encoded
        )
    )
    return CallResult(begun.id, task_id, "success", result, elapsed, begun.attempts, encoded=encoded)
