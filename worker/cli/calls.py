"""`mcp-worker call USER SERVICE TOOL`: enqueue a tool call and optionally wait for its row."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

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
    call.add_argument(
        "--wait",
        action="store_true",
        help="wait for the execution row and print it; the server's progress is shown on stderr meanwhile",
    )
    call.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)"
    )
    call.set_defaults(handler=_call)


def progress_line(progress: dict[str, Any]) -> str:
    """`progress 3/5: step 3` (the total and message when the server sent them)."""
    done = f"{progress['progress']:g}"
    if progress.get("total") is not None:
        done += f"/{progress['total']:g}"
    return f"progress {done}" + (f": {progress['message']}" if progress.get("message") else "")


def wait_for_row(task_id: str, timeout: float, *, show_progress: bool = False) -> dict[str, Any] | None:
    """Poll until the task's execution row is final (success, error or cancelled) or waits for
    input, or `timeout` passes; with `show_progress`, each new progress is printed to stderr."""
    deadline = time.monotonic() + timeout
    shown: object = None
    while True:
        with session_scope() as session:
            row = audit.get(session, task_id)
            data = audit.as_dict(row) if row is not None else None
        if show_progress and data is not None and data["progress"] and data["progress"] != shown:
            shown = data["progress"]
            print(progress_line(data["progress"]), file=sys.stderr, flush=True)
        if data is not None and (
            data["status"] in audit.FINAL or data["status"] == audit.Status.INPUT_REQUIRED
        ):
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
    row = wait_for_row(result.id, args.timeout, show_progress=True)
    if row is not None and row["status"] == audit.Status.INPUT_REQUIRED:
        print_json(row)  # answer it with `mcp-worker executions respond TASK_ID --json FILE`
        return 3
    if row is None or row["status"] not in audit.FINAL:
        print_json({"task_id": result.id, "status": row["status"] if row else "queued", "timed_out": True})
        return 2
    print_json(row)
    return 0 if row["status"] == "success" else 1
