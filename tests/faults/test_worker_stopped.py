"""A worker stopped with SIGTERM (a deploy, a scale-down) while 200 tasks are queued: the calls
it is running finish, the messages it had taken go back to the queue, and a new worker finishes
the rest. Nothing is lost and, unlike a SIGKILL, nothing runs twice."""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa
from fault_helpers import (
    Procs,
    RedisServer,
    add_service,
    by_status,
    row_counts,
    rows,
    start_counting_server,
    start_worker,
    unique,
    wait_final,
    worker_env,
)
from processes import wait_until

from worker.client import submit_tool

pytestmark = pytest.mark.faults

# As for the killed worker: a message left unacknowledged comes back within seconds.
WORKER_STOP = {
    "MCP_TASK_SOFT_TIME_LIMIT": 10,
    "MCP_TASK_TIME_LIMIT": 11,
    "MCP_CONNECT_TIMEOUT": 2,
    "MCP_CALL_TIMEOUT": 2,
    "MCP_VISIBILITY_TIMEOUT": 12,
    "MCP_UNACKED_RESTORE_INTERVAL": 1,
    "MCP_UNACKED_RESTORE_THROTTLE": 1,
}
QUEUED = 200
STOP_TIMEOUT_S = 30.0
ROW_TIMEOUT_S = 120.0


def test_a_worker_stopped_under_load_hands_back_what_it_took_and_nothing_runs_twice(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    server = start_counting_server(procs)
    env = worker_env(redis_server.url(), **WORKER_STOP)
    first = start_worker(procs, "warm-stop", env)
    user = unique("stopped")
    add_service(engine, user, "counted", "streamable_http", server.url)

    task_ids = [unique(f"s{i:03d}") for i in range(QUEUED)]
    for i, task_id in enumerate(task_ids):
        # Every tenth call takes a second, so one is running when the stop comes.
        seconds = 1 if i % 10 == 0 else 0
        submit_tool(
            user, "counted", "record", {"tag": task_id, "seconds": seconds}, task_id=task_id, app=first.app
        )

    def busy() -> bool:
        if by_status(rows(engine, task_ids))["success"] < QUEUED // 4:
            return False
        started, ended = server.calls(), server.ended()
        return any(started[t] > ended[t] for t in task_ids[::10])

    wait_until(busy, 120, "a quarter of the tasks done and a call in progress", interval=0.02)
    first.proc.popen.send_signal(signal.SIGTERM)
    code = first.proc.popen.wait(timeout=STOP_TIMEOUT_S)
    assert code == 0, first.tail()
    at_stop = rows(engine, task_ids)
    # A warm shutdown waits for the calls it is running: no row is left behind as `running`.
    assert set(by_status(at_stop)) == {"success"}, by_status(at_stop)
    assert QUEUED // 4 <= len(at_stop) < QUEUED, len(at_stop)

    second = start_worker(procs, "warm-stop-restarted", env)

    def explain() -> str:
        with redis_server.client() as broker:
            held = f"queue {broker.llen('mcp.tools')}, unacked {broker.hlen('unacked')}"
        return f"broker: {held}\n--- stopped worker ---\n{first.tail()}\n--- restarted worker ---\n{second.tail()}"

    final = wait_final(engine, task_ids, ROW_TIMEOUT_S, explain)
    assert by_status(final) == {"success": QUEUED}, by_status(final)
    assert set(row_counts(engine, task_ids).values()) == {1}
    calls = server.calls()
    twice = {t: calls[t] for t in task_ids if calls[t] != 1}
    assert twice == {}, twice
    assert all(final[t]["attempts"] == 1 for t in task_ids)
