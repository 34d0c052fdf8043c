"""The production tools worker and the cluster-wide per-service limit.

`mcp-worker worker -Q mcp.tools`, with no pool options, runs the threads pool with
MCP_TOOLS_CONCURRENCY calls in flight; two such workers calling one service limited to 5 never
have more than 5 calls on the server at once (the server counts), and every call succeeds with
its one attempt: a call that waited too long for a slot went back to the queue uncounted.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fault_helpers import Procs, RedisServer, add_service, start_tools_worker, unique, wait_final, worker_env
from processes import start_demo_server
from testenv import LOG_DIR

from worker import mcp
from worker.client import submit_tool
from worker.services.config import ServiceConfig
from worker.settings import Settings

pytestmark = pytest.mark.faults

LIMIT = 5
CALLS = 40
CALL_S = 0.5
WAIT_S = 120.0


def test_two_production_workers_keep_a_service_to_its_limit(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    proc, url = start_demo_server("streamable-http", LOG_DIR)
    procs.on_cleanup(proc.stop)
    user = unique("limited")
    add_service(engine, user, "slow", "streamable_http", url, params={"max_concurrency": LIMIT})
    env = worker_env(redis_server.url(), MCP_SLOT_WAIT_S=1)
    default = start_tools_worker(procs, "tools-default", env)
    second = start_tools_worker(procs, "tools-second", env, "-c", "20")

    stats = default.app.control.inspect(destination=[default.hostname], timeout=5).stats() or {}
    pool = stats[default.hostname]["pool"]
    assert "thread" in pool["implementation"], pool
    assert pool["max-concurrency"] == Settings.from_env({}).tools_concurrency

    task_ids = [unique("slot") for _ in range(CALLS)]
    for task_id in task_ids:
        submit_tool(user, "slow", "sleep", {"seconds": CALL_S}, task_id=task_id, app=second.app)
    found = wait_final(engine, task_ids, WAIT_S, lambda: default.tail() + second.tail())

    assert {r["status"] for r in found.values()} == {"success"}, found
    assert {r["attempts"] for r in found.values()} == {1}, "waiting for a slot is not an attempt"
    counted = mcp.call_tool(
        ServiceConfig(user_id=user, desc="probe", mode="streamable_http", url=url, endpoint=None, api_key=""),
        "concurrency",
        {},
    ).result
    assert counted["max"] == LIMIT, counted
    # Both workers took part, and some calls went back to the queue for want of a slot.
    assert any(t in default.log() for t in task_ids) and any(t in second.log() for t in task_ids)
    assert "goes back to the queue" in default.log() + second.log()
