"""One logging configuration for the worker, beat and the CLI.

Every record carries the current task's id, name and user (set around each task by Celery
signals), secrets are masked by a filter on the handler (not by remembering at each call site),
and `LOG_FORMAT=json` gives one JSON object per line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun

from worker.redaction import redact
from worker.settings import get_settings

_task: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("mcp_task", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(task_name)s %(task_id)s user=%(user_id)s] %(message)s"


class ContextFilter(logging.Filter):
    """Adds task_id, task_name and user_id to every record, and masks known secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _task.get() or {}
        record.task_id = ctx.get("task_id", "-")
        record.task_name = ctx.get("task_name", "-")
        record.user_id = ctx.get("user_id", "-")
        message = redact(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "task_id": getattr(record, "task_id", "-"),
            "task_name": getattr(record, "task_name", "-"),
            "user_id": getattr(record, "user_id", "-"),
            "pid": record.process,
        }
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


def configure_logging(level: str | int | None = None) -> None:
    """Install the handler on the root logger (idempotent)."""
    settings = get_settings()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mcp_worker", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._mcp_worker = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    logging.captureWarnings(True)
    root.setLevel(level or settings.log_level)
    # HTTP client internals log headers at DEBUG (session ids, cookies); the SDK's client logs
    # tracebacks for dropped streams that the runtime already classifies.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "mcp.client", "sse_starlette"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@setup_logging.connect
def _celery_setup_logging(loglevel: Any = None, **_: Any) -> None:
    # LOG_LEVEL, when set, wins over Celery's --loglevel (which always has a value, WARNING by
    # default), so one variable sets the level of the worker, beat and the CLI alike.
    explicit = os.environ.get("LOG_LEVEL")
    configure_logging(
        level=explicit.upper() if explicit else loglevel if isinstance(loglevel, str | int) else None
    )


@task_prerun.connect
def _bind_task(
    task_id: str | None = None, task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any
) -> None:
    user = (kwargs or {}).get("user_id")
    _task.set(
        {
            "task_id": task_id or "-",
            "task_name": getattr(task, "name", "-"),
            "user_id": user if isinstance(user, str) else "-",
        }
    )


@task_postrun.connect
def _unbind_task(**_: Any) -> None:
    _task.set(None)
