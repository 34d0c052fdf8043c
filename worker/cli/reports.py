"""`mcp-worker templates ...`, `mcp-worker report ...` and `mcp-worker reports
list|show|deliveries|deliver`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from worker.cli.output import print_json, print_table
from worker.client import submit_report
from worker.db.engine import session_scope
from worker.db.models import McpReport
from worker.errors import InvalidArguments, TemplateNotFound

# How often `report --wait` looks for the report row.
POLL_INTERVAL_S = 0.25


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    templates = sub.add_parser("templates", help="report templates (database, falling back to bundled)")
    cmds = templates.add_subparsers(dest="templates_command", metavar="ACTION")
    cmds.required = True
    cmds.add_parser("list", help="list templates").set_defaults(handler=_tpl_list)
    show = cmds.add_parser("show", help="print a template's source")
    show.add_argument("name")
    show.set_defaults(handler=_tpl_show)
    put = cmds.add_parser("set", help="validate (compile in the sandbox) and store a template")
    put.add_argument("name")
    put.add_argument("file", help="the template file ('-' for stdin)")
    put.add_argument("--description")
    put.add_argument("--created-by")
    put.set_defaults(handler=_tpl_set)
    rm = cmds.add_parser("remove", help="delete a stored template")
    rm.add_argument("name")
    rm.set_defaults(handler=_tpl_remove)
    preview = cmds.add_parser("preview", help="render a template against sample tool output (no server call)")
    preview.add_argument("name")
    preview.add_argument("--data", required=True, help="a JSON file of tool output ('-' for stdin)")
    preview.add_argument("--period", default=None, help="ISO week, default the data's week or last week")
    preview.set_defaults(handler=_tpl_preview)

    report = sub.add_parser("report", help="enqueue a report for a user (mcp.generate_report)")
    report.add_argument("user_id")
    report.add_argument("service")
    report.add_argument("--template")
    report.add_argument("--period", help="ISO week such as 2026-W47 (default: the last complete week)")
    report.add_argument("--refine", action="store_true", default=None, help="polish the report with OpenAI")
    report.add_argument(
        "--deliver",
        action="store_true",
        help="deliver it through the channels of the user's schedules of this service",
    )
    report.add_argument("--wait", action="store_true", help="wait for the report and print it")
    report.add_argument("--timeout", type=float, default=300.0)
    report.set_defaults(handler=_report)

    reports = sub.add_parser("reports", help="stored reports")
    rcmds = reports.add_subparsers(dest="reports_command", metavar="ACTION")
    rcmds.required = True
    rlist = rcmds.add_parser("list", help="latest reports")
    rlist.add_argument("--user", dest="user_id")
    rlist.add_argument("--service")
    rlist.add_argument("--limit", type=int, default=20)
    rlist.set_defaults(handler=_reports_list)
    rshow = rcmds.add_parser("show", help="print one report")
    rshow.add_argument("report_id", type=int)
    rshow.add_argument("--json", action="store_true")
    rshow.add_argument("--html", action="store_true", help="the report as sanitized HTML")
    rshow.set_defaults(handler=_reports_show)
    rdel = rcmds.add_parser("deliveries", help="where a report was sent, and how it went")
    rdel.add_argument("report_id", type=int)
    rdel.add_argument("--json", action="store_true")
    rdel.set_defaults(handler=_reports_deliveries)
    resend = rcmds.add_parser("deliver", help="send a report's failed (or unsent) deliveries again")
    resend.add_argument("report_id", type=int)
    resend.set_defaults(handler=_reports_deliver)


def _read(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")


def _tpl_list(_: argparse.Namespace) -> int:
    from worker.reports.storage import list_templates

    with session_scope() as session:
        rows = list_templates(session)
    print_table(
        ("name", "origin", "description"), [(r["name"], r["origin"], r["description"] or "") for r in rows]
    )
    return 0


def _tpl_show(args: argparse.Namespace) -> int:
    from worker.reports.storage import load_template

    with session_scope() as session:
        print(load_template(session, args.name).content)
    return 0


def _tpl_set(args: argparse.Namespace) -> int:
    from worker.reports.storage import save_template

    content = _read(args.file)
    with session_scope() as session:
        created = save_template(session, args.name, content, args.description, args.created_by)
    print(f"template {args.name!r} {'stored' if created else 'updated'}")
    return 0


def _tpl_remove(args: argparse.Namespace) -> int:
    from worker.reports.storage import remove_template

    with session_scope() as session:
        if not remove_template(session, args.name):
            raise TemplateNotFound(f"no stored template {args.name!r}")
    print(f"template {args.name!r} removed")
    return 0


def _tpl_preview(args: argparse.Namespace) -> int:
    from worker.reports.render import build_context, render_template
    from worker.reports.storage import load_template
    from worker.scheduling.cron import last_complete_iso_week

    try:
        data = json.loads(_read(args.data))
    except json.JSONDecodeError as exc:
        raise InvalidArguments(f"--data is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidArguments("--data must hold one JSON object (the data tool's output)")
    with session_scope() as session:
        source = load_template(session, args.name)
    period = args.period or data.get("week") or last_complete_iso_week(datetime.now(UTC))
    rendered = render_template(args.name, source.content, build_context(data, str(period)))
    print(rendered.text)
    if rendered.undefined:
        print(f"warning: undefined names: {', '.join(rendered.undefined)}", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from worker.reports.storage import report_for_task

    result = (
        _submit_delivered(args)
        if args.deliver
        else submit_report(args.user_id, args.service, args.template, args.period, args.refine)
    )
    if not args.wait:
        print_json({"task_id": result.id, "status": "queued"})
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            row = report_for_task(session, result.id)
            if row is not None:
                print(row.content)
                if row.refine_error:
                    print(f"note: refinement not used: {row.refine_error}", file=sys.stderr)
                return 0
            from worker.execution import audit

            execution = audit.get(session, result.id)
            if execution is not None and execution.status == audit.Status.ERROR:
                print(f"error: {execution.error_message}", file=sys.stderr)
                return 1
        time.sleep(POLL_INTERVAL_S)
    print_json({"task_id": result.id, "status": "pending", "timed_out": True})
    return 2


def _submit_delivered(args: argparse.Namespace) -> Any:
    """`report --deliver`: checked like `submit_report`, and refused when there is nowhere to send."""
    from worker import names
    from worker.celery import app
    from worker.delivery.job import user_channels
    from worker.settings import get_settings
    from worker.validation import validate_report_request, validate_tool_request

    user, desc, _, _ = validate_tool_request(
        args.user_id, args.service, "report", {}, max_argument_bytes=get_settings().max_argument_bytes
    )
    validate_report_request(args.template, args.period, args.refine)
    if not user_channels(user, desc):
        raise InvalidArguments(
            f"no schedule of {user!r}/{desc!r} has delivery channels "
            "(add one with: mcp-worker schedules add USER SERVICE --email ADDR)"
        )
    kwargs = {"user_id": user, "service": desc, "template": args.template, "period": args.period}
    return app.send_task(
        names.GENERATE_REPORT,
        kwargs={**kwargs, "refine": args.refine, "deliver": True},
        queue=names.REPORTS_QUEUE,
    )


def _reports_list(args: argparse.Namespace) -> int:
    query = sa.select(McpReport).order_by(McpReport.created_at.desc(), McpReport.id.desc()).limit(args.limit)
    if args.user_id:
        query = query.where(McpReport.user_id == args.user_id)
    if args.service:
        query = query.where(McpReport.service == args.service)
    with session_scope() as session:
        rows = session.scalars(query).all()
        table = [
            (r.id, r.user_id, r.service, r.period, r.template, "yes" if r.refined else "no", r.created_at)
            for r in rows
        ]
    print_table(("id", "user", "service", "period", "template", "refined", "created"), table)
    return 0


def _reports_show(args: argparse.Namespace) -> int:
    from worker.delivery.job import subject_of
    from worker.reports.html import report_page
    from worker.reports.storage import report_as_dict

    with session_scope() as session:
        row = _existing_report(session, args.report_id)
        data = report_as_dict(row)
        page = report_page(row.content, subject_of(row)) if args.html else None
    if args.json:
        print_json(data)
    elif page is not None:
        print(page, end="")
    else:
        print(data["content"])
    return 0


def _existing_report(session: sa.orm.Session, report_id: int) -> McpReport:
    row = session.get(McpReport, report_id)
    if row is None:
        raise InvalidArguments(f"no report with id {report_id}")
    return row


def _reports_deliveries(args: argparse.Namespace) -> int:
    from worker.delivery.log import deliveries_of

    with session_scope() as session:
        _existing_report(session, args.report_id)
        rows = deliveries_of(session, args.report_id)
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ("id", "channel", "target", "status", "attempts", "code", "delivered", "last error"),
        [
            (
                r["id"],
                r["channel"],
                r["target"],
                r["status"],
                r["attempts"],
                r["response_code"],
                r["delivered_at"],
                r["last_error"] or "",
            )
            for r in rows
        ],
    )
    return 0


def _reports_deliver(args: argparse.Namespace) -> int:
    from worker.db.models import McpReportDelivery
    from worker.delivery.job import enqueue
    from worker.delivery.log import Status, reopen_failed

    with session_scope() as session:
        _existing_report(session, args.report_id)
        reopened = reopen_failed(session, args.report_id)
        pending = session.scalars(
            sa.select(McpReportDelivery.id).where(
                McpReportDelivery.report_id == args.report_id,
                McpReportDelivery.status == Status.PENDING.value,
            )
        ).all()
    ids = sorted(set(reopened) | set(pending))
    if not ids:
        print(f"report {args.report_id}: nothing to send again (no failed or unsent deliveries)")
        return 0
    print_json(
        {"report_id": args.report_id, "queued": [{"delivery_id": i, "task_id": enqueue(i)} for i in ids]}
    )
    return 0
