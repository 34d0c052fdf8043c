"""Every command line the README and docs/ show runs, so a documented command that breaks fails CI.

The commands are read from the documents' `sh` and `python` code blocks; `COMMANDS` says for each
how it is run here or why not, and a test keeps that table and the documents in step. They run as
a user would type them (bash, from the clone's root), in document order, against a stack of this
test's own: a fresh database with the seed's sample data, its own Redis database, a worker,
Flower, and demo MCP servers standing in for the sample services' hosts. Example values that
name somebody else's server are replaced by this stack's (`EXAMPLES`); nothing else is changed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from processes import Proc, start_demo_server, start_flower, start_worker, wait_until
from stack import clean_env, fresh_database
from test_compose import ROOT
from testenv import LOG_DIR, RUN_ID, extra_redis_url

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = ("sh", "bash", "shell", "console")
# The sample services' credentials (worker/demo/sample_data.py): the stand-in servers require them.
GLOBAL_SAMPLE_KEY = "demo-api-key"
ENTERPRISE_SAMPLE_KEY = "enterprise-api-key"
FLOWER_USER, FLOWER_PASSWORD = "ops", f"docs-{RUN_ID}"
WAIT_S = 60.0


@dataclass(frozen=True)
class Documented:
    document: str
    key: str  # the command without its trailing comment (python: the block's first line)
    text: str  # what runs


def _strip_comment(line: str) -> str:
    """`cmd  # comment` -> `cmd`, leaving a `#` inside quotes alone."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _command_lines(body: str) -> Iterator[str]:
    """The commands of a shell block: backslash continuations and quotes spanning lines joined;
    lines that are only a comment (or the output shown as one) left out."""
    pending = ""
    for line in body.splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quote is still open
            pending += "\n"
            continue
        yield pending
        pending = ""


def documented(path: Path) -> list[Documented]:
    """The command lines and python blocks of one document, each command once."""
    found: list[Documented] = []
    name = str(path.relative_to(ROOT))
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), flags=re.M | re.S):
        if lang == "python":
            found.append(Documented(name, "python: " + body.splitlines()[0], body))
        elif lang in SHELLS:
            for command in _command_lines(body):
                key = " ".join(_strip_comment(command).split())
                if key and key not in [d.key for d in found]:
                    found.append(Documented(name, key, command))
    return found


@dataclass
class Stack:
    env: dict[str, str]
    scratch: Path
    flower: str
    demo_http: str

    def rows(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        engine = sa.create_engine(self.env["DATABASE_URL"])
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(sql), params)]
        finally:
            engine.dispose()

    def execution_id(self, task_id: str) -> str:
        [(row_id,)] = self.rows("SELECT id FROM mcp_executions WHERE task_id = :t", t=task_id)
        return str(row_id)


# Example values in the documents that name servers elsewhere -> this stack's.
EXAMPLES: list[tuple[str, Callable[[Stack], str]]] = [
    ("https://mcp.example.com/mcp", lambda s: s.demo_http),
    ("http://127.0.0.1:5555", lambda s: s.flower),
    ("redis://127.0.0.1:6379/0", lambda s: s.env["CELERY_BROKER_URL"]),
    ("executions show 17", lambda s: f"executions show {s.execution_id('order-4711-weekly')}"),
]


@dataclass(frozen=True)
class Run:
    """Run it; it must exit 0 and print `expect`; `then` checks what it did."""

    expect: str = ""
    scratch: bool = False  # in a scratch folder with copies of the files it reads, not the clone
    timeout: float = 120.0
    then: Callable[[Stack], None] | None = None


@dataclass(frozen=True)
class NotRun:
    """Not run here, for `reason`; `check` (when given) proves its options still parse."""

    reason: str
    check: list[str] | None = None


def _bench_parses(*args: str) -> list[str]:
    return [sys.executable, "-c", f"from bench.run import _parse; _parse({list(args)!r})"]


def _echo_ran(stack: Stack) -> None:
    query = "SELECT status FROM mcp_executions WHERE tool_name = 'echo' AND user_id = 'user1'"
    wait_until(lambda: stack.rows(query) == [("success",)], WAIT_S, "the echo call's row")


def _report_stored(stack: Stack) -> None:
    query = "SELECT count(*) FROM mcp_reports WHERE user_id = 'user1'"
    wait_until(lambda: stack.rows(query)[0][0] >= 1, WAIT_S, "the report's row")


BENCH_SLOW = "runs the benchmark for minutes; its options are parsed, and `--only` below runs it"
COMMANDS: dict[str, Run | NotRun] = {
    # README.md
    "make demo": Run(expect="shutting down (demo took", timeout=300.0),
    "make test": NotRun("the command running this test: .ci/run runs it in CI"),
    "python: from worker.client import submit_tool, submit_report": Run(
        expect="'status': 'success'", then=_report_stored
    ),
    "python: from celery import Celery": Run(then=_echo_ran),
    "mcp-worker db upgrade": Run(expect="database at revision"),
    "mcp-worker db sample-data": Run(expect="sample data:"),
    'printf %s "$KEY" | mcp-worker services add --user alice --desc pm --mode http '
    "--url https://mcp.example.com/mcp --api-key-file -": Run(),
    "mcp-worker services list --user alice": Run(expect="pm"),
    "mcp-worker services check alice pm": Run(expect="fetch_weekly_report"),
    "cp .env.example .env": Run(scratch=True),
    "docker compose up -d": NotRun(
        "needs a Docker engine; tests/test_compose_commands.py runs every service's command"
    ),
    'mcp-worker schedules add user1 openproject_weekly_report --cron "0 8 * * 1" --timezone Europe/Berlin': Run(),
    "mcp-worker schedules list": Run(expect="openproject_weekly_report"),
    "mcp-worker schedules run-now 1": Run(),
    "make bench": NotRun(BENCH_SLOW, ["make", "-n", "bench"]),
    ".venv/bin/python -m bench --quick": NotRun(BENCH_SLOW, _bench_parses("--quick")),
    ".venv/bin/python -m bench --runs 5 --concurrency 2 --keep-logs": NotRun(
        BENCH_SLOW, _bench_parses("--runs", "5", "--concurrency", "2", "--keep-logs")
    ),
    ".venv/bin/python -m bench --only execute_tool/stdio,ceiling": Run(expect='"summary"', timeout=300.0),
    "make help": Run(expect="make test"),
    "make lint": Run(timeout=600.0),
    # docs/OPERATIONS.md
    "curl -sS -u \"$FLOWER_USER:$FLOWER_PASSWORD\" -H 'Content-Type: application/json' -X POST "
    'http://127.0.0.1:5555/api/task/async-apply/mcp.execute_tool -d \'{"kwargs": {"user_id": "alice", '
    '"service": "project_management", "tool": "fetch_weekly_report", "arguments": {"week": "2026-W47"}}, '
    '"task_id": "order-4711-weekly"}\'': Run(expect="order-4711-weekly"),
    'curl -sS -u "$FLOWER_USER:$FLOWER_PASSWORD" '
    "'http://127.0.0.1:5555/api/task/result/order-4711-weekly?timeout=30'": Run(expect='"status": "success"'),
    "mcp-worker health": Run(expect="workers"),
    "mcp-worker health --services": Run(expect="enterprise_reports"),
    "mcp-worker health --json --timeout 2": Run(expect='"database"'),
    "mcp-worker health --fix-stuck": Run(),
    "mcp-worker executions prune": Run(expect="mcp_executions"),
    "mcp-worker executions prune --days 30": Run(expect="mcp_executions"),
    "mcp-worker executions list --user alice --status error --since 2h": Run(),
    "mcp-worker executions list --since 2026-11-01 --limit 100 --json": Run(expect="order-4711-weekly"),
    "mcp-worker executions show 17": Run(expect="fetch_weekly_report"),
    "mcp-worker executions show order-4711-weekly": Run(expect="fetch_weekly_report"),
    "mcp-worker executions cancel order-4711-weekly": NotRun(
        "needs a running call (the documented one has ended): tests/progress/test_cancel_worker.py runs it",
        [sys.executable, "-m", "worker.cli", "executions", "cancel", "--help"],
    ),
    "mcp-worker executions respond order-4711-weekly --json answers.json": NotRun(
        "needs a call waiting for input: tests/progress/test_respond_worker.py runs it",
        [sys.executable, "-m", "worker.cli", "executions", "respond", "--help"],
    ),
}


def _load_sample_data(database_url: str, demo_http: str, demo_sse: str, stdio: str) -> None:
    """Migrate, and the seed's sample rows with their hosts pointed at the stand-in servers."""
    from sqlalchemy.orm import Session

    from worker.db import schema
    from worker.demo.sample_data import load_sample_data
    from worker.services.store import save_service

    schema.upgrade(database_url)
    engine = sa.create_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            urls = {
                "openproject_weekly_report": demo_http,
                "enterprise_reports": demo_sse,
                "project_management": stdio,
            }
            overrides: dict[str, dict[str, object]] = {desc: {"url": url} for desc, url in urls.items()}
            # No OAuth authorization server here: the oauth sample row sends the sample key the
            # SSE stand-in requires (tests/oauth shows the row working once its client is set).
            overrides["enterprise_reports"]["auth"] = {"type": "api_key"}
            load_sample_data(session, overrides)
            # docs/OPERATIONS.md submits alice's project_management service.
            alice = {"user_id": "alice", "desc": "project_management", "interaction_mode": "http"}
            save_service(
                session,
                {**alice, "url": demo_http, "api_key": GLOBAL_SAMPLE_KEY, "params": {"project_id": 1}},
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    scratch = tmp_path_factory.mktemp("docs-scratch")
    shutil.copy(ROOT / ".env.example", scratch / ".env.example")
    started: list[Proc] = []
    try:
        with fresh_database("mcp_worker_docs") as database_url:
            broker = extra_redis_url()
            stdio = f"{sys.executable} -m worker.demo.server --transport stdio"
            env = clean_env(
                tmp_path_factory.mktemp("docs-home"),
                {
                    "DATABASE_URL": database_url,
                    "CELERY_BROKER_URL": broker,
                    "CELERY_RESULT_BACKEND": broker,
                    "MCP_DATA_DIR": str(tmp_path_factory.mktemp("docs-data")),
                    "MCP_STDIO_ALLOWED_COMMANDS": sys.executable,
                    "MCP_STDIO_DEFAULT_COMMAND": stdio,
                    "KEY": GLOBAL_SAMPLE_KEY,
                    "FLOWER_USER": FLOWER_USER,
                    "FLOWER_PASSWORD": FLOWER_PASSWORD,
                },
            )
            http, demo_http = start_demo_server(
                "streamable-http", LOG_DIR, token=GLOBAL_SAMPLE_KEY, test_tools=False
            )
            started.append(http)
            sse, demo_sse = start_demo_server("sse", LOG_DIR, token=ENTERPRISE_SAMPLE_KEY, test_tools=False)
            started.append(sse)
            _load_sample_data(database_url, demo_http, demo_sse, stdio)
            started.append(start_worker(f"docs-{RUN_ID}", LOG_DIR, env))
            flower, base = start_flower(LOG_DIR, env, f"{FLOWER_USER}:{FLOWER_PASSWORD}")
            started.append(flower)
            yield Stack(env, scratch, base, demo_http)
    finally:
        for proc in reversed(started):
            proc.stop()


def _run(stack: Stack, command: Documented, how: Run) -> str | None:
    """None when the command did what its entry says, else what went wrong."""
    text = command.text
    for example, live in EXAMPLES:
        if example in text:
            text = text.replace(example, live(stack))
    argv = [sys.executable, "-c", text] if command.key.startswith("python: ") else ["bash", "-c", text]
    done = subprocess.run(
        argv,
        env=stack.env,
        cwd=stack.scratch if how.scratch else ROOT,
        capture_output=True,
        text=True,
        timeout=how.timeout,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        return f"exit {done.returncode}: {output[-1500:]}"
    if how.expect not in output:
        return f"printed no {how.expect!r}: {output[-1500:]}"
    if how.then is not None:
        how.then(stack)
    return None


def test_every_documented_command_is_in_the_table() -> None:
    found = {c.key for path in DOCUMENTS for c in documented(path)}
    assert found - set(COMMANDS) == set(), "say in COMMANDS how to run these (or why not)"
    assert set(COMMANDS) - found == set(), "these are no longer documented: drop them from COMMANDS"


# A document's commands run one after another, `make lint` and the demo among them: minutes, more
# when the suite's other processes share the cores.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_documents_commands_run(stack: Stack, path: Path) -> None:
    failures = {}
    for command in documented(path):
        how = COMMANDS[command.key]
        if isinstance(how, Run):
            problem = _run(stack, command, how)
        elif how.check is not None:
            done = subprocess.run(
                how.check, env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            problem = None if done.returncode == 0 else f"{how.check}: {done.stdout}{done.stderr}"
        else:
            problem = None
        if problem:
            failures[command.key] = problem
    assert failures == {}
