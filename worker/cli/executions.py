"""`mcp-worker executions list|show|cancel|respond|prune`: the audit rows of `mcp_executions`.

Rows are stored redacted (params masked, known secrets replaced), so printing them shows no key.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.cli.output import print_json, print_table
from worker.db.engine import autocommit, session_scope
from worker.db.models import McpExecution
from worker.errors import InvalidArguments
from worker.execution import audit, pauses
from worker.settings import get_settings

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.I)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# How often `cancel` looks at the row while the running call stops.
CANCEL_POLL_S = 0.2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("executions", help="the audit rows of tool calls (mcp_executions)")
    cmds = group.add_subparsers(dest="executions_command", metavar="ACTION")
    cmds.required = True

    lst = cmds.add_parser("list", help="latest executions, newest first")
    lst.add_argument("--user", dest="user_id")
    lst.add_argument("--status", choices=[s.value for s in audit.Status])
    lst.add_argument(
        "--since", help="created at or after: an ISO date or datetime (UTC if no offset), or 30m, 2h, 3d, 1w"
    )
    lst.add_argument("--limit", type=int, default=20, help="at most this many rows (default 20)")
    lst.add_argument("--json", action="store_true", help="print JSON (the full rows) instead of a table")
    lst.set_defaults(handler=_list)

    show = cmds.add_parser("show", help="print one execution as JSON")
    show.add_argument("execution", metavar="ID", help="the row id or the Celery task id")
    show.set_defaults(handler=_show)

    stop = cmds.add_parser(
        "cancel", help="stop a call: the server is told to cancel it, the row ends `cancelled`, no retry"
    )
    stop.add_argument("task_id", metavar="TASK_ID", help="the Celery task id of the call")
    stop.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for a running call to stop (default 10)"
    )
    stop.set_defaults(handler=_cancel)

    answer = cmds.add_parser(
        "respond", help="answer the input a call asked for (its row says input_required) and resume it"
    )
    answer.add_argument("task_id", metavar="TASK_ID", help="the Celery task id of the call")
    answer.add_argument(
        "--json",
        dest="json_file",
        required=True,
        metavar="FILE",
        help="the answers: a JSON object keyed like the row's input_request.requests ('-' reads stdin)",
    )
    answer.set_defaults(handler=_respond)

    prune = cmds.add_parser(
        "prune", help="delete executions and reports older than MCP_RETENTION_DAYS (what beat does daily)"
    )
    prune.add_argument("--days", type=int, help="keep this many days instead (0 keeps everything)")
    prune.set_defaults(handler=_prune)


def parse_since(raw: str, now: datetime | None = None) -> datetime:
    """`raw` as an aware datetime: `2h`/`3d`-style ages before `now`, else an ISO date or datetime.

    Raises:
        InvalidArguments: `raw` is neither.
    """
    match = _RELATIVE.match(raw)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidArguments(
            f"--since {raw!r} is not an ISO date/datetime nor an age such as 30m, 2h, 3d, 1w"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise InvalidArguments("--limit must be at least 1")
    query = (
        sa.select(McpExecution)
        .order_by(McpExecution.created_at.desc(), McpExecution.id.desc())
        .limit(args.limit)
    )
    if args.user_id:
        query = query.where(McpExecution.user_id == args.user_id)
    if args.status:
        query = query.where(McpExecution.status == args.status)
    if args.since:
        query = query.where(McpExecution.created_at >= parse_since(args.since).astimezone(UTC))
    with session_scope() as session:
        rows = [audit.as_dict(r) for r in session.scalars(query)]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ("id", "task_id", "user", "service", "tool", "status", "attempts", "ms", "created"),
        [
            (
                r["id"],
                r["task_id"],
                r["user_id"],
                r["service"],
                r["tool"],
                r["status"],
                r["attempts"],
                r["execution_time_ms"],
                r["created_at"],
            )
            for r in rows
        ],
    )
    return 0


def find(session: Session, key: str) -> McpExecution | None:
    """The row whose id (when `key` is a number) or task id is `key`."""
    # Larger numbers cannot be a row id (a 32-bit integer column) and would make Postgres refuse.
    if key.isdigit() and int(key) < 2**31:
        row = session.get(McpExecution, int(key))
        if row is not None:
            return row
    return audit.get(session, key)


def _show(args: argparse.Namespace) -> int:
    with session_scope() as session:
        row = find(session, args.execution.strip())
        if row is None:
            raise InvalidArguments(f"no execution with id or task id {args.execution!r}")
        data = audit.as_dict(row)
    print_json(data)
    return 0


def _row_status(task_id: str) -> str | None:
    with session_scope() as session:
        row = audit.get(session, task_id)
        return row.status if row is not None else None


def _cancel(args: argparse.Namespace) -> int:
    """Signal every worker (a Redis key and a Celery revoke), end a row no call runs at once, and
    wait for a running one to stop. Exit 0 once the row says `cancelled` (or the task had not
    started: the revoke drops it), 1 when the call had already ended, 2 when it did not stop in
    time."""
    from worker import mcp
    from worker.celery import app
    from worker.execution import cancel  # with the MCP runtime: only this command needs it

    task_id = args.task_id.strip()
    if not task_id:
        raise InvalidArguments("TASK_ID must not be empty")
    status = _row_status(task_id)
    if status in (audit.Status.SUCCESS, audit.Status.ERROR):
        print_json(
            {"task_id": task_id, "status": status, "cancelled": False, "reason": "the call already ended"}
        )
        return 1
    cancel.request(task_id, get_settings())
    app.control.revoke(task_id)
    message = "CallCancelled: cancelled by an operator (mcp-worker executions cancel) before it ran again"
    try:
        _, server_task = cancel.end_idle(task_id, message)
    finally:
        mcp.shutdown_runtime()
    deadline = time.monotonic() + max(args.timeout, 0.0)
    while (status := _row_status(task_id)) == audit.Status.RUNNING and time.monotonic() < deadline:
        time.sleep(CANCEL_POLL_S)
    if status is None:
        print_json({"task_id": task_id, "status": "revoked", "cancelled": True})
        return 0
    answer: dict[str, object] = {
        "task_id": task_id,
        "status": status,
        "cancelled": status == audit.Status.CANCELLED,
    }
    if server_task is not None:
        answer["server_task"] = server_task
    print_json(answer)
    if status == audit.Status.CANCELLED:
        return 0
    return 2 if status == audit.Status.RUNNING else 1


def _read_answers(path: str) -> dict[str, object]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArguments(f"cannot read --json {path}: {exc.strerror}") from None
    try:
        answers = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArguments(f"--json {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(answers, dict) or not answers:
        raise InvalidArguments("--json must hold a non-empty JSON object: request key -> answer")
    return answers


def _respond(args: argparse.Namespace) -> int:
    """Store the answers on the `input_required` row and send the call again under its task id;
    the worker retries the tool call with them (and the server's request state)."""
    from worker import mcp, names
    from worker.celery import app
    from worker.execution.call import RESUME_HEADER, RETRY_BACKOFF_MAX_S
    from worker.redaction import MASK

    task_id = args.task_id.strip()
    answers = _read_answers(args.json_file)
    mcp.input_responses(answers)  # refuses answers that are not what MCP clients send
    with session_scope() as session:
        row = audit.get(session, task_id)
        if row is None:
            raise InvalidArguments(f"no execution with task id {task_id!r}")
        status, stored, params = row.status, row.input_request, row.params
        user, desc, tool = row.user_id, row.tool_desc, row.tool_name
    if status != audit.Status.INPUT_REQUIRED:
        raise InvalidArguments(f"execution {task_id!r} is {status}, not input_required: nothing to answer")
    if not isinstance(stored, dict) or not isinstance(stored.get("requests"), dict):
        raise InvalidArguments(
            "the server asked through its MCP task (tasks/result), which must be answered while that "
            "request is open; the worker cannot answer it later: cancel the call"
        )
    unknown = sorted(set(answers) - set(stored["requests"]))
    if unknown:
        raise InvalidArguments(
            f"no input request named {', '.join(unknown)}; asked: {', '.join(stored['requests'])}"
        )
    if MASK in json.dumps(params):
        raise InvalidArguments(
            "the call's arguments are stored masked, so it cannot be resent: send it again"
        )
    request = {**stored, "responses": answers}
    if not autocommit(
        lambda connection: pauses.respond(
            connection, task_id, request=request, retry_within=RETRY_BACKOFF_MAX_S
        )
    ):
        raise InvalidArguments(f"execution {task_id!r} changed meanwhile; look at it with executions show")
    app.send_task(
        names.EXECUTE_TOOL,
        kwargs={"user_id": user, "service": desc, "tool": tool, "arguments": params or {}},
        task_id=task_id,
        queue=names.TOOLS_QUEUE,
        headers={RESUME_HEADER: True},
    )
    print_json({"task_id": task_id, "status": audit.Status.RETRYING.value, "resumed": True})
    return 0


def _prune(args: argparse.Namespace) -> int:
    from worker.ops.retention import prune

    if args.days is not None and args.days < 0:
        raise InvalidArguments("--days must be 0 or more")
    print_json(prune(days=args.days))
    return 0
