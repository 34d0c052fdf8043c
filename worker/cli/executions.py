"""`mcp-worker executions list|show|prune`: the audit rows of `mcp_executions`.

Rows are stored redacted (params masked, known secrets replaced), so printing them shows no key.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.cli.output import print_json, print_table
from worker.db.engine import session_scope
from worker.db.models import McpExecution
from worker.errors import InvalidArguments
from worker.execution import audit

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.I)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


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


def _prune(args: argparse.Namespace) -> int:
    from worker.ops.retention import prune

    if args.days is not None and args.days < 0:
        raise InvalidArguments("--days must be 0 or more")
    print_json(prune(days=args.days))
    return 0
