"""Input required: the demo server's `confirm_delete` answers its first call with a 2026-07-28
`InputRequiredResult`. On the production tools worker the row ends `input_required` with the
request stored; `mcp-worker executions respond TASK_ID --json FILE` stores the answers and sends
the call again, which completes with them. Answers that do not fit are refused, losing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from fault_helpers import (
    Procs,
    RedisServer,
    add_service,
    rows,
    start_demo,
    start_tools_worker,
    unique,
    worker_env,
)
from processes import wait_until

from worker.client import submit_tool

ROW_TIMEOUT_S = 60.0
MCP_WORKER = str(Path(sys.executable).parent / "mcp-worker")


def _respond(
    task_id: str, answers: object, env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"answers-{len(list(tmp_path.glob('answers-*')))}.json"
    path.write_text(json.dumps(answers), encoding="utf-8")
    return subprocess.run(
        [MCP_WORKER, "executions", "respond", task_id, "--json", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _status_is(engine: sa.Engine, task_id: str, status: str) -> bool:
    return rows(engine, [task_id]).get(task_id, {}).get("status") == status


def test_an_input_request_is_stored_and_respond_resumes_the_call(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine, tmp_path: Path
) -> None:
    _, url = start_demo(procs)
    env = worker_env(redis_server.url())
    worker = start_tools_worker(procs, "respond", env)
    user = unique("respond")
    add_service(engine, user, "demo", "streamable_http", url)

    result = submit_tool(user, "demo", "confirm_delete", {"item": "report-7"}, app=worker.app)
    wait_until(lambda: _status_is(engine, result.id, "input_required"), ROW_TIMEOUT_S, "input_required", 0.1)
    asked = rows(engine, [result.id])[result.id]
    request = asked["input_request"]["requests"]["confirm"]
    assert (request["method"], request["params"]["message"]) == ("elicitation/create", "Delete report-7?")
    assert asked["input_request"]["request_state"]
    assert result.get(timeout=30)["status"] == "input_required"

    unknown = _respond(result.id, {"nope": {"action": "accept"}}, env, tmp_path)
    malformed = _respond(result.id, {"confirm": {"action": "maybe"}}, env, tmp_path)
    assert unknown.returncode == 1 and "no input request named nope; asked: confirm" in unknown.stderr
    assert malformed.returncode == 1 and "do not parse at confirm" in malformed.stderr
    assert _status_is(engine, result.id, "input_required")  # nothing lost

    done = _respond(result.id, {"confirm": {"action": "accept", "content": {"confirm": True}}}, env, tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"task_id": result.id, "status": "retrying", "resumed": True}
    wait_until(lambda: _status_is(engine, result.id, "success"), ROW_TIMEOUT_S, "the resumed call", 0.1)
    row = rows(engine, [result.id])[result.id]
    assert row["result"] == ["deleted report-7"]
    assert row["attempts"] == 2  # the question, then the answered call
    again = _respond(result.id, {"confirm": {"action": "accept"}}, env, tmp_path)
    assert again.returncode == 1 and "is success, not input_required" in again.stderr
