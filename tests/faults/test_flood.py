"""A flood of 1,000 calls to one slow server and another user's calls on the same worker.

What holds (docs/RELIABILITY.md, "A flood of calls"): the slow server never sees more than
MCP_MAX_CONCURRENCY_PER_SERVICE calls from one worker process; the queue is first in, first out,
so a call is never overtaken by flood calls sent after it and waits at most for the calls ahead
of it, each bounded by its timeouts; and a flood sent to its own queue, which the worker also
consumes, does not delay calls on `mcp.tools` at all (Kombu polls a worker's queues in turn).
On the production tools worker (threads, a cluster-wide slot limit per service) a user's calls
beyond the first few of a minute go out at lower priorities (`worker.fairness`), and threads that
find no slot are re-queued instead of waiting in line for one: another user's call, sent while
5,000 flood calls are queued, is done within OTHER_USER_BOUND_S.
"""

from __future__ import annotations

import time
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
    rows,
    start_counting_server,
    start_demo,
    start_tools_worker,
    start_worker,
    unique,
    wait_final,
    worker_env,
)
from processes import wait_until

from worker import fairness, mcp
from worker.client import submit_tool
from worker.services.config import ServiceConfig
from worker.settings import Settings

pytestmark = pytest.mark.faults

LIMIT = 2
FLOOD_SETTINGS = {
    "MCP_MAX_CONCURRENCY_PER_SERVICE": LIMIT,
    "MCP_TASK_SOFT_TIME_LIMIT": 12,
    "MCP_TASK_TIME_LIMIT": 14,
    "MCP_CONNECT_TIMEOUT": 3,
    "MCP_CALL_TIMEOUT": 3,
    "MCP_VISIBILITY_TIMEOUT": 20,
}
# One process with eight threads: the per-service limit is per process, so this is where it binds
# (a prefork process runs one task at a time and never reaches a limit of 2).
POOL, THREADS = "threads", 8
FLOOD = 1000
BULK_QUEUE = "mcp.bulk"


@dataclass
class Flood:
    worker: Worker
    server: CountingServer
    flooder: str
    bob: str


def _start(procs: Procs, broker: RedisServer, engine: sa.Engine, queues: str) -> Flood:
    server = start_counting_server(procs)
    _, fast_url = start_demo(procs)
    env = worker_env(broker.url(), **FLOOD_SETTINGS)
    worker = start_worker(procs, "flood", env, pool=POOL, concurrency=THREADS, queues=queues)
    flooder, bob = unique("flooder"), unique("bob")
    add_service(engine, flooder, "slow", "streamable_http", server.url)
    add_service(engine, bob, "fast", "streamable_http", fast_url)
    return Flood(worker, server, flooder, bob)


def test_a_flood_in_the_shared_queue_is_capped_and_never_overtakes_an_earlier_call(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    setup = _start(procs, redis_server, engine, "mcp.tools")
    bob_at = FLOOD // 4
    flood_ids = [unique(f"f{i:04d}") for i in range(FLOOD)]
    bob_id = unique("bob")
    for i, task_id in enumerate(flood_ids):
        if i == bob_at:
            submit_tool(setup.bob, "fast", "echo", {"message": "hi"}, task_id=bob_id, app=setup.worker.app)
        args = {"tag": task_id, "seconds": 0.1}
        submit_tool(setup.flooder, "slow", "record", args, task_id=task_id, app=setup.worker.app)

    bob = wait_final(engine, [bob_id], 120, setup.worker.tail)[bob_id]
    flood_then = by_status(rows(engine, flood_ids))
    assert bob["status"] == "success", bob
    # Bob waited for the calls sent before him, not for the 750 sent after him.
    assert flood_then["success"] + flood_then["error"] < bob_at + FLOOD // 10, flood_then

    final = wait_final(engine, flood_ids, 240, setup.worker.tail)
    assert by_status(final) == {"success": FLOOD}, by_status(final)
    assert sum(setup.server.calls()[t] for t in flood_ids) == FLOOD
    # However many threads and queued calls, the slow server saw at most LIMIT at once.
    assert setup.server.max_in_flight() <= LIMIT, setup.server.max_in_flight()


def test_a_flood_on_its_own_queue_does_not_delay_other_users(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    setup = _start(procs, redis_server, engine, f"mcp.tools,{BULK_QUEUE}")
    flood_ids = [unique(f"b{i:04d}") for i in range(FLOOD)]
    for task_id in flood_ids:
        setup.worker.app.send_task(
            "mcp.execute_tool",
            kwargs={
                "user_id": setup.flooder,
                "service": "slow",
                "tool": "record",
                "arguments": {"tag": task_id, "seconds": 0.5},
            },
            task_id=task_id,
            queue=BULK_QUEUE,
        )
    wait_until(lambda: setup.server.max_in_flight() >= LIMIT, 60, "the flood to reach the slow server")

    # Sent after the whole flood: served between flood calls, not after them.
    bob_ids = [unique("bob") for _ in range(5)]
    for task_id in bob_ids:
        submit_tool(setup.bob, "fast", "echo", {"message": "hi"}, task_id=task_id, app=setup.worker.app)
    bob = wait_final(engine, bob_ids, 60, setup.worker.tail)
    flood_done = by_status(rows(engine, flood_ids))
    assert by_status(bob) == {"success": len(bob_ids)}, bob
    assert flood_done["success"] + flood_done["error"] < FLOOD // 10, flood_done

    # Purge what is still queued (a whole flood at LIMIT calls at a time would take minutes), let
    # the calls already taken finish, and account for every one of the 1,000.
    with redis_server.client() as client, client.pipeline(transaction=True) as pipe:
        purged = pipe.llen(BULK_QUEUE).delete(BULK_QUEUE).execute()[0]
    # The queue is first in, first out and the flood was sent in order: the purged calls are the last.
    taken = flood_ids[: FLOOD - purged]
    final = wait_final(engine, taken, 120, setup.worker.tail)
    assert by_status(final) == {"success": len(taken)}, by_status(final)
    assert len(rows(engine, flood_ids)) == len(taken) == FLOOD - purged
    assert setup.server.max_in_flight() <= LIMIT


# Issue 14's bound: another user's call, sent while a flood fills the production worker, is done
# (its row says success) within this long of being sent.
OTHER_USER_BOUND_S = 1.0
BIG_FLOOD = 5000
SLOW_CALL_S = 1.0


@pytest.mark.timed
def test_another_users_call_overtakes_a_5000_call_flood_on_the_production_worker(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine
) -> None:
    _, slow_url = start_demo(procs)
    _, fast_url = start_demo(procs)
    flooder, bob = unique("flooder"), unique("bob")
    add_service(engine, flooder, "slow", "streamable_http", slow_url)
    add_service(engine, bob, "fast", "streamable_http", fast_url)
    worker = start_tools_worker(procs, "fair", worker_env(redis_server.url()))

    flood_ids = [unique(f"f{i:04d}") for i in range(BIG_FLOOD)]
    for task_id in flood_ids:
        submit_tool(flooder, "slow", "sleep", {"seconds": SLOW_CALL_S}, task_id=task_id, app=worker.app)
    probe = ServiceConfig(
        user_id=bob, desc="probe", mode="streamable_http", url=slow_url, endpoint=None, api_key=""
    )

    def flooding() -> bool:
        return mcp.call_tool(probe, "concurrency", {}).result["in_flight"] > 0

    wait_until(flooding, 60, "the flood to reach the slow server", interval=0.2)

    # Three calls, one after another, each sent while the flood holds every slot of its service
    # and thousands of its calls wait in the queue ahead of it.
    took = []
    for _ in range(3):
        bob_id = unique("bob")
        sent = time.monotonic()
        submit_tool(bob, "fast", "echo", {"message": "hi"}, task_id=bob_id, app=worker.app)
        wait_until(
            lambda bob_id=bob_id: (
                rows(engine, [bob_id]).get(bob_id, {}).get("status") in ("success", "error")
            ),
            30,
            "the other user's call",
            interval=0.01,
        )
        took.append(time.monotonic() - sent)
        assert rows(engine, [bob_id])[bob_id]["status"] == "success", worker.tail()
    flood_done = by_status(rows(engine, flood_ids))
    assert flood_done["success"] < BIG_FLOOD // 10, flood_done  # the flood was far from done
    with redis_server.client() as client:
        # The worker counted off each of Bob's calls as it ended; the flood's still wait.
        assert int(client.get(f"{fairness.PREFIX}{bob}") or 0) == 0
        assert int(client.get(f"{fairness.PREFIX}{flooder}") or 0) > BIG_FLOOD // 2
    assert max(took) <= OTHER_USER_BOUND_S, (took, flood_done)
    assert (
        mcp.call_tool(probe, "concurrency", {}).result["max"] <= Settings.from_env({}).service_max_concurrency
    )
