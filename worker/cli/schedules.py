"""`mcp-worker schedules add|list|show|remove|enable|disable|run-now`."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from worker.cli.output import print_json, print_table
from worker.db.engine import session_scope
from worker.db.models import McpReportSchedule
from worker.delivery.channels import Channel, describe, email_channel, slack_channel, webhook_channel
from worker.errors import InvalidArguments
from worker.scheduling.cron import DEFAULT_CRON, DEFAULT_TIMEZONE, period_for_slot, previous_slot


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schedules = sub.add_parser("schedules", help="per-user report schedules (fired by beat)")
    cmds = schedules.add_subparsers(dest="schedules_command", metavar="ACTION")
    cmds.required = True
    add = cmds.add_parser("add", help="add a schedule (cron and time zone are checked now)")
    add.add_argument("user_id")
    add.add_argument("service")
    add.add_argument("--template")
    add.add_argument(
        "--cron", default=DEFAULT_CRON, help=f"5-field cron expression (default {DEFAULT_CRON!r})"
    )
    add.add_argument("--timezone", default=DEFAULT_TIMEZONE, help="IANA time zone (default UTC)")
    add.add_argument("--refine", action="store_true")
    add.add_argument(
        "--email", action="append", default=[], metavar="ADDR", help="email each report to ADDR (repeatable)"
    )
    add.add_argument(
        "--slack-webhook-file", metavar="F", help="a file holding a Slack incoming-webhook URL (a credential)"
    )
    add.add_argument("--webhook", metavar="URL", help="POST each report, signed, to URL (MCP_ALLOWED_HOSTS)")
    add.add_argument(
        "--webhook-secret-file", metavar="F", help="a file holding the webhook's HMAC secret (16+ characters)"
    )
    add.set_defaults(handler=_add)
    lst = cmds.add_parser("list", help="list schedules")
    lst.add_argument("--user", dest="user_id")
    lst.set_defaults(handler=_list)
    for name, handler, text in (
        ("show", _show, "print one schedule and where its reports go"),
        ("remove", _remove, "delete a schedule"),
        ("enable", _enable, "enable a schedule (resets its failure count)"),
        ("disable", _disable, "disable a schedule"),
        ("run-now", _run_now, "enqueue the schedule's report for the last complete period now"),
    ):
        cmd = cmds.add_parser(name, help=text)
        cmd.add_argument("schedule_id", type=int)
        cmd.set_defaults(handler=handler)


def _secret_file(path: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidArguments(f"cannot read the {what} file {path!r}: {exc.strerror}") from None
    if not value:
        raise InvalidArguments(f"the {what} file {path!r} is empty")
    return value


def _channels(args: argparse.Namespace) -> list[Channel]:
    """The channels the options name, each checked (nothing is stored when one is bad)."""
    found = [email_channel(address) for address in args.email]
    if args.slack_webhook_file:
        found.append(slack_channel(_secret_file(args.slack_webhook_file, "Slack webhook")))
    if bool(args.webhook) != bool(args.webhook_secret_file):
        raise InvalidArguments(
            "--webhook and --webhook-secret-file go together (the webhook is always signed)"
        )
    if args.webhook:
        found.append(webhook_channel(args.webhook, _secret_file(args.webhook_secret_file, "webhook secret")))
    return found


def _add(args: argparse.Namespace) -> int:
    from worker.scheduling.schedules import add_schedule

    channels = _channels(args)
    with session_scope() as session:
        row = add_schedule(
            session,
            user_id=args.user_id,
            service=args.service,
            template=args.template,
            cron=args.cron,
            timezone=args.timezone,
            refine=args.refine,
            channels=channels,
        )
        print_json(
            {
                "id": row.id,
                "cron": row.cron,
                "timezone": row.timezone,
                "next_run_at": row.next_run_at,
                "channels": describe(row.channels),
            }
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    query = sa.select(McpReportSchedule).order_by(McpReportSchedule.id)
    if args.user_id:
        query = query.where(McpReportSchedule.user_id == args.user_id)
    with session_scope() as session:
        rows = [
            (
                s.id,
                s.user_id,
                s.service,
                s.template or "(default)",
                s.cron,
                s.timezone,
                "yes" if s.enabled else "no",
                s.last_slot,
                s.next_run_at,
                s.consecutive_failures,
                s.disabled_reason or "",
            )
            for s in session.scalars(query)
        ]
    print_table(
        (
            "id",
            "user",
            "service",
            "template",
            "cron",
            "tz",
            "enabled",
            "last slot",
            "next run",
            "failures",
            "reason",
        ),
        rows,
    )
    return 0


def _get(session: sa.orm.Session, schedule_id: int) -> McpReportSchedule:
    row = session.get(McpReportSchedule, schedule_id)
    if row is None:
        raise InvalidArguments(f"no schedule with id {schedule_id}")
    return row


def _show(args: argparse.Namespace) -> int:
    with session_scope() as session:
        row = _get(session, args.schedule_id)
        data = {
            "id": row.id,
            "user_id": row.user_id,
            "service": row.service,
            "template": row.template,
            "cron": row.cron,
            "timezone": row.timezone,
            "refine": row.refine,
            "enabled": row.enabled,
            "last_slot": row.last_slot,
            "next_run_at": row.next_run_at,
            "consecutive_failures": row.consecutive_failures,
            "disabled_reason": row.disabled_reason,
            "channels": describe(row.channels),
        }
    print_json(data)
    return 0


def _remove(args: argparse.Namespace) -> int:
    with session_scope() as session:
        session.delete(_get(session, args.schedule_id))
    print(f"schedule {args.schedule_id} removed")
    return 0


def _enable(args: argparse.Namespace) -> int:
    from worker.scheduling.schedules import set_enabled

    with session_scope() as session:
        set_enabled(session, args.schedule_id, True)
    print(f"schedule {args.schedule_id} enabled")
    return 0


def _disable(args: argparse.Namespace) -> int:
    from worker.scheduling.schedules import set_enabled

    with session_scope() as session:
        set_enabled(session, args.schedule_id, False)
    print(f"schedule {args.schedule_id} disabled")
    return 0


def _run_now(args: argparse.Namespace) -> int:
    from worker.client import submit_report

    with session_scope() as session:
        row = _get(session, args.schedule_id)
        slot = previous_slot(row.cron, row.timezone, datetime.now(UTC))
        period = period_for_slot(slot, row.timezone) if slot else None
        fields = (row.user_id, row.service, row.template, period, row.refine)
    result = submit_report(*fields)
    print_json({"task_id": result.id, "period": fields[3], "status": "queued"})
    return 0
