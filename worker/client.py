"""The producer API: enqueue tool calls and reports by task name.

Apps need only `celery` and the broker URL: tasks are sent by name with `send_task`, so none of
the worker's tasks run in the producer. `submit_tool` also counts the user's calls in Redis and
sends the calls of a user with many waiting at lower priorities (`worker.fairness`); a bare
`send_task` skips that. The payload is checked here first (a malformed call is refused before it
reaches the queue) and carries no secrets: the worker resolves credentials.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.result import AsyncResult

from worker import fairness, names
from worker.settings import get_settings
from worker.validation import validate_report_request, validate_tool_request


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from worker.celery import app as default_app

    return default_app


def submit_tool(
    user_id: str,
    service: str,
    tool: str,
    arguments: dict[str, Any] | None = None,
    *,
    task_id: str | None = None,
    app: Celery | None = None,
) -> AsyncResult:
    """Enqueue `mcp.execute_tool` and return its AsyncResult.

    Sending the same `task_id` twice yields one execution row and one tool call.

    Raises:
        InvalidArguments: a field is missing, of the wrong type or too large (nothing is sent).
        kombu.exceptions.OperationalError: the broker could not be reached (nothing is sent).
    """
    user, desc, name, args = validate_tool_request(
        user_id, service, tool, arguments, max_argument_bytes=get_settings().max_argument_bytes
    )
    celery = _app(app)
    # A user with many calls waiting yields to the others (`worker.fairness`).
    # Counted on the Redis the message goes to (the write URL when the app splits them).
    broker = celery.conf.broker_write_url or celery.conf.broker_url
    priority = fairness.priority_for(user, str(broker))
    return celery.send_task(
        names.EXECUTE_TOOL,
        kwargs={"user_id": user, "service": desc, "tool": name, "arguments": args},
        task_id=task_id,
        queue=names.TOOLS_QUEUE,
        priority=priority,
        headers={fairness.FAIR_HEADER: 1} if priority is not None else None,
    )


def submit_report(
    user_id: str,
    service: str,
    template: str | None = None,
    period: str | None = None,
    refine: bool | None = None,
    *,
    task_id: str | None = None,
    app: Celery | None = None,
) -> AsyncResult:
    """Enqueue `mcp.generate_report` and return its AsyncResult (the same task id twice: one report).

    Raises:
        InvalidArguments: a field is missing or malformed (nothing is sent).
        kombu.exceptions.OperationalError: the broker could not be reached (nothing is sent).
    """
    user, desc, _, _ = validate_tool_request(
        user_id, service, "report", {}, max_argument_bytes=get_settings().max_argument_bytes
    )
    validate_report_request(template, period, refine)
    return _app(app).send_task(
        names.GENERATE_REPORT,
        kwargs={"user_id": user, "service": desc, "template": template, "period": period, "refine": refine},
        task_id=task_id,
        queue=names.REPORTS_QUEUE,
    )
