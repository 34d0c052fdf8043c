"""`mcp-worker call USER SERVICE TOOL`: enqueue a tool call and optionally wait for its row."""

from __future__ import annotations

import argparse
import json
import time

from worker.cli.output import print_json
from worker.client import submit_tool
from worker.db.engine import session_scope
from worker.errors import InvalidArguments
from worker.execution import audit

# How often --wait looks at the execution row.
POLL_INTERVAL_S = 0.2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    call = sub.add_parser("call", help="enqueue a tool call for a user (mcp.execute_tool)")
    call.add_argument("user_id")
    call.add_argument("service")
    call.add_argument("tool")
    call.add_argument("--args", default="{}", help="tool arguments, a JSON object")
    call.add_argument("--task-id", help="a task id of your own (re-sending it calls the tool once)")
    call.add_argument("--wait", action="store_true", help="wait for the execution row and print it")
    call.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)"
    )
    call.set_defaults(handler=_call)


def wait_for_row(task_id: str, timeout: float) -> dict[str, object] | None:
    """Poll until the task's execution row is final (success or error), or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            row = audit.get(session, task_id)
            data = audit.as_dict(row) if row is not None else None
        if data is not None and data["status"] in (audit.Status.SUCCESS, audit.Status.ERROR):
            return data
        if time.monotonic() >= deadline:
            return data
        time.sleep(POLL_INTERVAL_S)


def _call(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise InvalidArguments(f"--args is not valid JSON: {exc.msg}") from None
    result = submit_tool(args.user_id, args.service, args.tool, arguments, task_id=args.task_id)
    if not args.wait:
        print_json({"task_id": result.id, "status": "queued"})
        return 0
    row = wait_for_row(result.id, args.timeout)
    if row is None or row["status"] not in ("success", "error"):
        print_json({"task_id": result.id, "status": row["status"] if row else "queued", "timed_out": True})
        return 2
    print_json(row)
    return 0 if row["status"] == "success" else 1
