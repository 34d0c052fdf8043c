"""A worker killed with SIGKILL: one pool child in the middle of a tool call, or the whole worker
with a queue of 200 tasks. Tasks come back (late acks: reject-on-worker-lost for a pool child, the
Redis visibility timeout and restore sweep for a whole worker) and end in one row each. And the
whole worker stopped with SIGTERM under the same load, which loses nothing and repeats nothing."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from fault_helpers import (
    CountingServer,
    Procs,
    RedisServer,
    Worker,
    add_service,
    by_status,
    row_counts,
    rows,
    start_counting_server,
    start_worker,
    tasks_logging,
    unique,
    wait_final,
    worker_env,
)
from processes import wait_until

from worker.client import submit_tool

pytestmark = pytest.mark.faults

# Short limits so a dead holder's lease (the soft time limit) runs out in seconds; the visibility
# timeout stays above the hard limit, as in production. The settings want the soft limit above
# connect + call + 5 s.
CHILD_KILL = {
    "MCP_TASK_SOFT_TIME_LIMIT": 15,
    "MCP_TASK_TIME_LIMIT": 17,
    "MCP_CONNECT_TIMEOUT": 2,
    "MCP_CALL_TIMEOUT": 7,
    "MCP_VISIBILITY_TIMEOUT": 25,
    "MCP_UNACKED_RESTORE_INTERVAL": 1,
    "MCP_UNACKED_RESTORE_THROTTLE": 1,
}
# Longer than the test needs to see the call and kill its process; shorter than the call timeout.
CALL_S = 6
ROW_TIMEOUT_S = 120.0
# The dead attempt's lease (the soft limit), the redelivered call, and room to spare.
REDELIVERY_TIMEOUT_S = 60.0


def test_a_pool_child_killed_mid_call_is_redelivered_into_the_same_row(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    server = start_counting_server(procs)
    worker = start_worker(procs, "child-kill", worker_env(redis_server.url(), **CHILD_KILL))
    user = unique("killed")
    add_service(engine, user, "slow", "streamable_http", server.url)

    task_id = unique("mid-call")
    submit_tool(user, "slow", "record", {"tag": task_id, "seconds": CALL_S}, task_id=task_id, app=worker.app)
    running = wait_until(
        lambda: [t for t in worker.active() if t["id"] == task_id], 30, "the task in `inspect active`"
    )
    child = running[0]["worker_pid"]
    assert child in worker.pool_pids(), (child, worker.pool_pids())
    # Kill it as soon as the tool call is in progress on the server.
    wait_until(lambda: server.calls()[task_id] == 1, 60, "the call to reach the server", interval=0.02)
    os.kill(child, signal.SIGKILL)
    assert server.ended()[task_id] == 0, "the call ended before the kill"

    row = wait_final(engine, [task_id], REDELIVERY_TIMEOUT_S, worker.tail)[task_id]
    assert row["status"] == "success", f"{row}\n{worker.tail()}"
    assert row["attempts"] == 2, row
    assert row_counts(engine, [task_id])[task_id] == 1
    # The killed attempt and the redelivered one each called the tool once.
    assert server.calls()[task_id] == 2
    assert "WorkerLostError" in worker.log() or "signal 9" in worker.log()


# Every time limit below the visibility timeout (as in production, scaled down): a message the dead
# worker held comes back 12 s after it was delivered, when the lease of its row has run out.
WORKER_KILL = {
    "MCP_TASK_SOFT_TIME_LIMIT": 10,
    "MCP_TASK_TIME_LIMIT": 11,
    "MCP_CONNECT_TIMEOUT": 2,
    "MCP_CALL_TIMEOUT": 2,
    "MCP_VISIBILITY_TIMEOUT": 12,
    "MCP_UNACKED_RESTORE_INTERVAL": 1,
    "MCP_UNACKED_RESTORE_THROTTLE": 1,
}
QUEUED = 200


@dataclass
class Queued:
    server: CountingServer
    env: dict[str, str]
    first: Worker
    task_ids: list[str]


def queue_calls_and_wait_mid_call(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine, name: str
) -> Queued:
    """Start a worker, queue QUEUED calls (every tenth takes a second) and return once a quarter
    have succeeded and a one-second call is in progress on the server."""
    server = start_counting_server(procs)
    env = worker_env(redis_server.url(), **WORKER_KILL)
    first = start_worker(procs, name, env)
    user = unique(name)
    add_service(engine, user, "counted", "streamable_http", server.url)

    task_ids = [unique(f"q{i:03d}") for i in range(QUEUED)]
    for i, task_id in enumerate(task_ids):
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
    return Queued(server, env, first, task_ids)


def broker_state(redis_server: RedisServer) -> str:
    """What a timeout needs to be told apart: messages still queued, held unacknowledged, and
    whether a dead worker left the restore sweep's lock behind."""
    with redis_server.client() as broker:
        lock = "held" if broker.exists("unacked_mutex") else "free"
        return f"queue {broker.llen('mcp.tools')}, unacked {broker.hlen('unacked')}, restore lock {lock}"


def test_a_killed_and_restarted_worker_finishes_every_queued_task_once(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    queued = queue_calls_and_wait_mid_call(procs, redis_server, engine, "whole-kill")
    server, env, first, task_ids = queued.server, queued.env, queued.first, queued.task_ids
    os.killpg(first.pid, signal.SIGKILL)
    first.proc.stop(timeout=10)
    at_kill = rows(engine, task_ids)
    in_flight = {t for t, r in at_kill.items() if r["status"] == "running"}
    done_at_kill = {t for t, r in at_kill.items() if r["status"] == "success"}
    assert in_flight and QUEUED // 4 <= len(done_at_kill) < QUEUED, by_status(at_kill)

    second = start_worker(procs, "whole-kill-restarted", env)

    def explain() -> str:
        # The broker, the restarted worker's view, and whether the MCP server is still answering.
        warnings = [line for line in second.log().splitlines() if " WARNING " in line or " ERROR " in line]
        found = rows(engine, task_ids)
        missing = [t for t in task_ids if t not in found]
        for name, log in (("killed", first.log()), ("restarted", second.log())):
            warnings += [f"{name}: {line}" for line in log.splitlines() if any(t in line for t in missing)]
        return (
            f"broker: {broker_state(redis_server)}\n--- restarted worker, warnings and errors ---\n"
            + "\n".join(warnings[-20:])
            + f"\n--- restarted worker, tail ---\n{second.tail(2000)}\n--- MCP server ---\n{server.proc.log()[-2000:]}"
        )

    final = wait_final(engine, task_ids, ROW_TIMEOUT_S, explain)

    assert by_status(final) == {"success": QUEUED}, by_status(final)
    assert set(row_counts(engine, task_ids).values()) == {1}
    calls = server.calls()
    # Every task called the tool; only those in flight at the kill may have called it again.
    assert all(calls[t] >= 1 for t in task_ids)
    called_again = {t for t in task_ids if calls[t] > 1}
    assert called_again <= in_flight, (called_again - in_flight, in_flight)
    assert all(final[t]["attempts"] == 1 and calls[t] == 1 for t in done_at_kill)
    assert all(final[t]["attempts"] == calls[t] for t in called_again)
    # Deliveries of tasks that had already succeeded were answered from the row, not the server;
    # only a task in flight at the kill can have found its row held by another delivery.
    answered_from_row = tasks_logging(second.log(), "already succeeded")
    assert answered_from_row <= set(task_ids)
    assert all(calls[t] == 1 for t in answered_from_row)
    assert tasks_logging(second.log(), "held by another delivery") <= in_flight


# Longer than the longest call here (1 s) plus a worker's own shutdown.
WARM_STOP_TIMEOUT_S = 30.0


def test_a_worker_stopped_under_load_hands_back_what_it_took_and_nothing_runs_twice(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    # A deploy or a scale-down: the calls it is running finish, the messages it had taken go back
    # to the queue, and a new worker finishes the rest. Unlike a SIGKILL, nothing runs twice.
    queued = queue_calls_and_wait_mid_call(procs, redis_server, engine, "warm-stop")
    server, env, first, task_ids = queued.server, queued.env, queued.first, queued.task_ids
    first.proc.popen.send_signal(signal.SIGTERM)
    code = first.proc.popen.wait(timeout=WARM_STOP_TIMEOUT_S)
    assert code == 0, first.tail()
    at_stop = rows(engine, task_ids)
    # A warm shutdown waits for the calls it is running: no row is left behind as `running`.
    assert set(by_status(at_stop)) == {"success"}, by_status(at_stop)
    assert QUEUED // 4 <= len(at_stop) < QUEUED, len(at_stop)

    second = start_worker(procs, "warm-stop-restarted", env)

    def explain() -> str:
        state = broker_state(redis_server)
        return f"broker: {state}\n--- stopped worker ---\n{first.tail()}\n--- restarted worker ---\n{second.tail()}"

    final = wait_final(engine, task_ids, ROW_TIMEOUT_S, explain)
    assert by_status(final) == {"success": QUEUED}, by_status(final)
    assert set(row_counts(engine, task_ids).values()) == {1}
    calls = server.calls()
    twice = {t: calls[t] for t in task_ids if calls[t] != 1}
    assert twice == {}, twice
    assert all(final[t]["attempts"] == 1 for t in task_ids)
