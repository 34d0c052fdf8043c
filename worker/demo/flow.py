"""`mcp-worker demo`: the whole flow on the embedded default, with nothing else installed.

It migrates the SQLite database in the data folder, points the seed's sample services at the
bundled demo MCP server (streamable HTTP and SSE on free loopback ports, stdio as a child of the
worker), starts a real Celery worker on the file broker, enqueues one tool call per transport
and a weekly report through the queue, shows progress, prints the execution rows and the report,
and stops everything it started. The demo always uses the embedded default, even when
DATABASE_URL or CELERY_BROKER_URL are set, so it never writes sample data into a real database.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.errors import WorkerError
from worker.processes import Child, free_port, port_open, spawn

if TYPE_CHECKING:
    from worker.settings import Settings

# The whole demo (worker start included) must finish well inside this.
DEMO_TIMEOUT_S = 80.0
# Starting a worker or a server: Python imports plus the first connection.
START_TIMEOUT_S = 30.0
# A warm shutdown lets running tasks finish; past this the process group is killed.
STOP_TIMEOUT_S = 15.0
EMBEDDED_OVERRIDES = ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DEVELOPMENT_MODE")

STDIO_COMMAND = f"{shlex.quote(sys.executable)} -m worker.demo.server --transport stdio"


class DemoFailed(WorkerError):
    """A step of the demo did not complete."""


def demo_environment(data_dir: Path | None = None) -> dict[str, str]:
    """The environment of the demo and its children: the embedded default in one folder."""
    env = {k: v for k, v in os.environ.items() if k not in EMBEDDED_OVERRIDES}
    if data_dir is not None:
        env["MCP_DATA_DIR"] = str(data_dir)
    env["MCP_STDIO_ALLOWED_COMMANDS"] = sys.executable
    env.setdefault("MCP_CONNECT_TIMEOUT", "10")
    env.setdefault("MCP_CALL_TIMEOUT", "20")
    env.setdefault("MCP_TASK_SOFT_TIME_LIMIT", "60")
    return env


@contextmanager
def _child(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> Iterator[Child]:
    # Not tied to the demo's life: with --keep-running they outlive it.
    child = spawn(name, argv, env, log_dir, die_with_parent=False, fresh_log=True)
    try:
        yield child
    finally:
        child.stop(timeout=STOP_TIMEOUT_S)


def _wait(child: Child, predicate: Callable[[], Any], what: str) -> None:
    try:
        child.wait_for(predicate, START_TIMEOUT_S, what)
    except (TimeoutError, RuntimeError) as exc:
        raise DemoFailed(str(exc)) from None


def _progress(line: str) -> None:
    print(f"  {line}", flush=True)


def start_demo_server(
    stack: ExitStack, transport: str, token: str, env: Mapping[str, str], log_dir: Path
) -> int:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "worker.demo.server",
        "--transport",
        transport,
        "--port",
        str(port),
        "--token",
        token,
    ]
    child = stack.enter_context(_child(f"demo-server-{transport}", argv, env, log_dir))
    _wait(child, lambda: port_open(port), f"the {transport} demo server on port {port}")
    return port


def start_worker(stack: ExitStack, env: Mapping[str, str], log_dir: Path, *, with_beat: bool = False) -> str:
    from worker.celery import app

    hostname = f"demo-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "-n",
        hostname,
        "-Q",
        "mcp.tools,mcp.reports,mcp.schedule",
        "-c",
        "2",
        "--loglevel",
        "INFO",
        "--without-gossip",
    ]
    if with_beat:
        argv.append("--beat")
    child = stack.enter_context(_child("worker", argv, env, log_dir))

    def answered() -> bool:
        replies = app.control.ping(destination=[hostname], timeout=0.5) or []
        return any(hostname in reply for reply in replies)

    _wait(child, answered, "the Celery worker to answer a ping")
    return hostname


def _point_samples_at_demo_servers(http_port: int, sse_port: int) -> None:
    from worker.db.engine import session_scope
    from worker.demo.sample_data import SAMPLE_SERVICES, load_sample_data
    from worker.services.store import save_service

    urls = {
        "openproject_weekly_report": f"http://127.0.0.1:{http_port}/mcp",
        "project_management": STDIO_COMMAND,
        "enterprise_reports": f"http://127.0.0.1:{sse_port}/sse",
    }
    # The demo runs no OAuth authorization server: its copy of the seed's oauth sample row sends
    # the sample's api key, which the SSE stand-in requires (a real one needs its client set,
    # README "OAuth client credentials").
    overrides: dict[str, dict[str, Any]] = {desc: {"url": url} for desc, url in urls.items()}
    overrides["enterprise_reports"]["auth"] = {"type": "api_key"}
    with session_scope() as session:
        load_sample_data(session, overrides)
        # A second run gets new ports: move the sample rows to them (nothing else changes).
        for sample in SAMPLE_SERVICES:
            save_service(session, {**sample, **overrides[sample["desc"]]})


DEMO_CALLS = (
    ("streamable_http", "demo-user", "openproject_weekly_report"),
    ("stdio", "user1", "project_management"),
    ("sse", "user2", "enterprise_reports"),
)


def _final_rows(task_ids: list[str]) -> dict[str, dict[str, Any]]:
    from worker.db.engine import session_scope
    from worker.execution import audit

    rows = {}
    with session_scope() as session:
        for task_id in task_ids:
            row = audit.get(session, task_id)
            if row is not None and row.status in (audit.Status.SUCCESS, audit.Status.ERROR):
                rows[task_id] = audit.as_dict(row)
    return rows


def _report_row(task_id: str) -> dict[str, Any] | None:
    from worker.db.engine import session_scope
    from worker.reports.storage import report_as_dict, report_for_task

    with session_scope() as session:
        row = report_for_task(session, task_id)
        return report_as_dict(row) if row is not None else None


def _embedded_settings() -> tuple[dict[str, str], Settings]:
    """The demo's environment, applied to this process: the embedded default, nothing else."""
    from worker.settings import get_settings, reset_settings

    env = demo_environment()
    for name in EMBEDDED_OVERRIDES:
        os.environ.pop(name, None)
    os.environ.update({k: env[k] for k in ("MCP_STDIO_ALLOWED_COMMANDS",)})
    reset_settings()
    return env, get_settings()


def _enqueue() -> tuple[list[str], str]:
    """The demo's tool calls and its report; returns their task ids."""
    from worker.client import submit_report, submit_tool

    task_ids = []
    for transport, user, service in DEMO_CALLS:
        result = submit_tool(user, service, "fetch_weekly_report", {})
        task_ids.append(result.id)
        _progress(f"enqueued fetch_weekly_report over {transport} for {user} ({result.id})")
    report = submit_report("demo-user", "openproject_weekly_report", "executive_summary.j2")
    _progress(f"enqueued a weekly report for demo-user ({report.id})")
    return task_ids, report.id


def _wait_for(task_ids: list[str], report_id: str, deadline: float) -> tuple[dict[str, dict[str, Any]], Any]:
    """The final rows of the calls and the report row, once all are in, one failed, or at `deadline`."""
    rows: dict[str, dict[str, Any]] = {}
    report_row = None
    shown = ""
    while time.monotonic() < deadline:
        rows = _final_rows(task_ids)
        report_row = _report_row(report_id)
        report_failed = _final_rows([report_id]).get(report_id, {}).get("status") == "error"
        state = f"{len(rows)}/{len(task_ids)} tool calls done, report {'done' if report_row else 'pending'}"
        if state != shown:
            _progress(state)
            shown = state
        if (len(rows) == len(task_ids) and report_row is not None) or report_failed:
            break
        time.sleep(0.2)
    return rows, report_row


def _show(task_ids: list[str], rows: dict[str, dict[str, Any]], report_id: str, report_row: Any) -> bool:
    """Print the executions and the report; True when every step succeeded."""
    from worker.cli.output import print_table

    print("\nExecutions (mcp_executions):")
    table = [
        (
            r["id"],
            r["user_id"],
            r["service"],
            r["tool"],
            transport,
            r["status"],
            r["attempts"],
            r["execution_time_ms"],
        )
        for (transport, _, _), task_id in zip(DEMO_CALLS, task_ids, strict=True)
        if (r := rows.get(task_id)) is not None
    ]
    print_table(("id", "user", "service", "tool", "transport", "status", "attempts", "ms"), table)
    failures = [r for r in rows.values() if r["status"] != "success"]
    for row in failures:
        print(f"  error in execution {row['id']}: {row['error_message']}")
    if report_row is not None:
        print(f"\nWeekly report {report_row['period']} (mcp_reports id {report_row['id']}):\n")
        print(report_row["content"])
    else:
        error = _final_rows([report_id]).get(report_id, {}).get("error_message")
        print(f"\nreport not produced: {error or 'timed out'}")
    return len(rows) == len(task_ids) and not failures and report_row is not None


def run_demo(*, keep_running: bool = False) -> int:
    """Run the demo; returns the process exit code (0 when every step succeeded).

    Raises:
        DemoFailed: a step failed (the message says which); everything started is stopped.
    """
    env, settings = _embedded_settings()
    from worker.db import schema

    started = time.monotonic()
    log_dir = settings.data_dir / "logs"
    print(f"mcp-worker demo: embedded default in {settings.data_dir}")
    print("  database: SQLite (mcp-worker.sqlite3), broker: Kombu filesystem transport, results: files")
    schema.ensure_schema()
    _progress("database migrated")

    with ExitStack() as stack:
        http_port = start_demo_server(stack, "streamable-http", "demo-api-key", env, log_dir)
        sse_port = start_demo_server(stack, "sse", "enterprise-api-key", env, log_dir)
        _progress(f"demo MCP servers up: streamable HTTP :{http_port}, SSE :{sse_port}, stdio via the worker")
        _point_samples_at_demo_servers(http_port, sse_port)
        _progress("sample services and templates loaded")
        hostname = start_worker(stack, env, log_dir, with_beat=keep_running)
        _progress(f"worker {hostname} ready")

        task_ids, report_id = _enqueue()
        rows, report_row = _wait_for(task_ids, report_id, started + DEMO_TIMEOUT_S)
        ok = _show(task_ids, rows, report_id, report_row)
        if keep_running and ok:
            stack.pop_all()
            print(
                "\nThe worker (with beat) and the demo servers keep running. Open Flower with:\n"
                f"  MCP_DATA_DIR={shlex.quote(str(settings.data_dir))} celery -A worker flower "
                "--address=127.0.0.1 --port=5555\n"
                "and stop everything with: pkill -f 'celery -A worker' ; pkill -f worker.demo.server"
            )
            return 0
        print(f"\nshutting down (demo took {time.monotonic() - started:.1f}s)")
    if not ok:
        raise DemoFailed(f"the demo did not complete; logs are in {log_dir}")
    return 0
