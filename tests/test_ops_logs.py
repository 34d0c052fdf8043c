"""The worker's logs with LOG_FORMAT=json at DEBUG: one JSON object per line, the task's id, name
and user on every line of a task, and no api key anywhere, after succeeding and failing calls.

A dedicated worker (one pool process, so the tasks run one after the other in one process) runs on
its own Redis database: the session's worker consumes the same queue names on the test database,
and two workers there would compete for the tasks.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from processes import broker_env, start_demo_server, start_worker, wait_until
from testenv import LOG_DIR, extra_redis_url

from worker.db.engine import session_scope
from worker.execution import audit
from worker.services.config import GLOBAL_USER
from worker.services.store import remove_service, save_service

KEY = f"sk-live-LOGTEST-{uuid.uuid4().hex}"
BAD_KEY = f"sk-live-LOGTEST-BAD-{uuid.uuid4().hex}"
STDIO_COMMAND = f"{sys.executable} -m worker.demo.server --transport stdio --test-tools"
ROW_TIMEOUT_S = 60.0
FIELDS = {"ts", "level", "logger", "message", "task_id", "task_name", "user_id", "pid"}
_FINISHED = re.compile(r"^Task mcp\.execute_tool\[([0-9a-f-]+)\] (succeeded|raised|failed)")


@dataclass
class Call:
    user: str
    service: str
    tool: str
    arguments: dict[str, Any]
    status: str = ""
    error: str | None = None


@dataclass
class Run:
    """What the dedicated worker logged while running `calls` (keyed by task id), in order."""

    raw: str
    lines: list[dict[str, Any]]
    main_pid: int
    calls: dict[str, Call] = field(default_factory=dict)

    def child_lines(self) -> list[dict[str, Any]]:
        """Lines of the pool process(es), where tasks run, in the order they were written."""
        return [line for line in self.lines if line["pid"] != self.main_pid]


def _final(task_id: str) -> tuple[str, str | None]:
    def done() -> tuple[str, str | None] | None:
        with session_scope() as session:
            row = audit.get(session, task_id)
            if row is not None and row.status in ("success", "error"):
                return row.status, row.error_message
        return None

    return wait_until(done, ROW_TIMEOUT_S, f"the execution row of {task_id}", interval=0.1)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    from celery import Celery

    suffix = uuid.uuid4().hex[:6]
    alice, bob = f"log-alice-{suffix}", f"log-bob-{suffix}"
    stdio_desc = f"logs-stdio-{suffix}"
    demo, url = start_demo_server("streamable-http", LOG_DIR, token=KEY)
    services = [
        {"user_id": alice, "desc": "good", "interaction_mode": "http", "url": url, "api_key": KEY},
        {"user_id": alice, "desc": "bad", "interaction_mode": "http", "url": url, "api_key": BAD_KEY},
        # A global stdio service: one pooled session serves both users' calls.
        {
            "user_id": GLOBAL_USER,
            "desc": stdio_desc,
            "interaction_mode": "stdio",
            "url": STDIO_COMMAND,
            "api_key": KEY,
        },
    ]
    with session_scope() as session:
        for record in services:
            save_service(session, record)
    calls = [
        Call(alice, "good", "whoami", {}),
        Call(alice, "bad", "whoami", {}),
        Call(alice, "good", "fail", {"message": "boom"}),
        Call(alice, stdio_desc, "whoami", {}),
        Call(bob, stdio_desc, "fail", {"message": "bob's failure"}),
        Call(bob, stdio_desc, "echo", {"message": "hi"}),
    ]
    broker_url = extra_redis_url()
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": broker_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",
    }
    proc = None
    try:
        # One pool process; Celery hands its own --loglevel to the logging setup (LOG_LEVEL alone
        # does not reach it), and the last --loglevel given wins.
        proc = start_worker(
            f"logs-{suffix}", LOG_DIR, env, queues="mcp.tools", concurrency=1, extra=["--loglevel", "DEBUG"]
        )
        sent: dict[str, Call] = {}
        for call in calls:
            kwargs = {
                "user_id": call.user,
                "service": call.service,
                "tool": call.tool,
                "arguments": call.arguments,
            }
            # Celery reads CELERY_BROKER_URL before any app configuration: set it while sending.
            with broker_env(broker_url):
                producer = Celery("log-producer", set_as_current=False)
                try:
                    result = producer.send_task(
                        "mcp.execute_tool", kwargs=kwargs, queue="mcp.tools", ignore_result=True
                    )
                finally:
                    producer.close()
            # One at a time, so each task's lines have a clear start and end in the log.
            call.status, call.error = _final(result.id)
            sent[result.id] = call
    finally:
        if proc is not None:
            proc.stop()  # warm shutdown: the pool closes its sessions and logs it
        demo.stop()
        redis.Redis.from_url(broker_url).flushdb()
        with session_scope() as session:
            for record in services:
                remove_service(session, record["user_id"], record["desc"])
    assert proc is not None
    raw = proc.log()
    lines = [json.loads(line) for line in raw.splitlines() if line.startswith("{")]
    yield Run(raw=raw, lines=lines, main_pid=proc.popen.pid, calls=sent)


def test_the_calls_succeeded_and_failed_as_intended(run: Run) -> None:
    outcomes = [(c.tool, c.service.split("-")[0], c.status) for c in run.calls.values()]
    assert outcomes == [
        ("whoami", "good", "success"),
        ("whoami", "bad", "error"),
        ("fail", "good", "error"),
        ("whoami", "logs", "success"),
        ("fail", "logs", "error"),
        ("echo", "logs", "success"),
    ]
    bad = next(c for c in run.calls.values() if c.service == "bad")
    assert bad.error is not None and "AuthenticationFailed" in bad.error


def test_every_log_line_is_one_json_object_with_the_task_fields(run: Run) -> None:
    assert len(run.lines) > 50
    for line in run.lines:
        assert set(line) >= FIELDS, line
    assert any(line["level"] == "DEBUG" for line in run.lines)


def test_every_line_of_a_task_carries_its_id_name_and_user(run: Run) -> None:
    for task_id, call in run.calls.items():
        own = [line for line in run.lines if line["task_id"] == task_id]
        assert own, f"no line carries {task_id}"
        assert all(line["task_name"] == "mcp.execute_tool" for line in own)
        assert all(line["user_id"] == call.user for line in own), [
            line for line in own if line["user_id"] != call.user
        ]
        # Celery's own line saying how the task ended is written inside the task's context.
        assert any(_FINISHED.match(line["message"]) for line in own), f"no end line for {task_id}"
        # In the pool process every line that names the task is a line of the task.
        naming = [line for line in run.child_lines() if task_id in line["message"]]
        assert naming and all(line["task_id"] == task_id for line in naming)
    failures = [
        line
        for line in run.lines
        if line["logger"] == "worker.execution.call" and "failed" in line["message"]
    ]
    assert {line["task_id"] for line in failures} == {t for t, c in run.calls.items() if c.status == "error"}


def test_no_api_key_anywhere_in_the_worker_output(run: Run) -> None:
    # The whole output: JSON lines, Celery's banner, warnings, anything a library printed.
    assert KEY not in run.raw
    assert BAD_KEY not in run.raw
    assert "sk-live-LOGTEST" not in run.raw


def test_no_line_carries_the_id_of_a_task_that_already_finished(run: Run) -> None:
    finished: set[str] = set()
    late = []
    for line in run.child_lines():
        if line["task_id"] in finished:
            late.append(line)
        match = _FINISHED.match(line["message"])
        if match and line["task_id"] == match.group(1):
            finished.add(match.group(1))
    assert late == []


def test_http_wire_logs_are_silenced_even_at_debug(run: Run) -> None:
    assert [line for line in run.lines if line["logger"].startswith(("httpcore", "httpx"))] == []
