"""Recovery in seconds, on heartbeats: a stopped (hung) worker's call runs on another worker, and
when the stopped one resumes it records nothing over the first outcome; a call that runs far
longer than the visibility timeout is delivered once and runs once. Each on prefork and on the
production tools worker."""

from __future__ import annotations

import re
import signal
import time

import pytest
import sqlalchemy as sa
from fault_helpers import (
    WORKER_KINDS,
    Procs,
    RedisServer,
    add_service,
    row_counts,
    rows,
    signal_tree,
    start_counting_server,
    start_kind,
    unique,
    wait_final,
    worker_env,
)
from processes import wait_until

from worker.client import submit_tool
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.timed]

DEFAULTS = Settings.from_env({})
# How long the stopped worker's call takes on the server.
STOPPED_CALL_S = 20
# The bound is the feature: the dead holder's lease, its message's visibility timeout and one
# restore sweep, then the call itself on the second worker (and room for a loaded machine).
STOPPED_RECOVERY_S = (
    DEFAULTS.lease_seconds
    + DEFAULTS.visibility_timeout
    + DEFAULTS.unacked_restore_interval * DEFAULTS.unacked_restore_throttle
    + STOPPED_CALL_S
    + 15
)
RESUME_TIMEOUT_S = 60.0
# The test environment's limits are tight (5 s calls); these calls take longer.
SLOW_CALLS = {"MCP_CALL_TIMEOUT": 40, "MCP_TASK_SOFT_TIME_LIMIT": 120}


@pytest.mark.parametrize("kind", WORKER_KINDS)
def test_a_stopped_worker_hands_its_call_over_and_records_nothing_when_it_resumes(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine, kind: str
) -> None:
    server = start_counting_server(procs)
    env = worker_env(redis_server.url(), **SLOW_CALLS)
    first = start_kind(kind, procs, "stopped", env)
    user = unique("hung")
    add_service(engine, user, "slow", "streamable_http", server.url)
    task_id = unique("hung-call")
    submit_tool(
        user, "slow", "record", {"tag": task_id, "seconds": STOPPED_CALL_S}, task_id=task_id, app=first.app
    )
    wait_until(lambda: server.calls()[task_id] == 1, 60, "the call to reach the server", interval=0.05)

    signal_tree(first, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        second = start_kind(kind, procs, "takes-over", env)
        row = wait_final(engine, [task_id], STOPPED_RECOVERY_S - (time.monotonic() - stopped_at), second.tail)
        assert row[task_id]["status"] == "success", row
        assert row[task_id]["attempts"] == 2 and server.calls()[task_id] == 2
    finally:
        signal_tree(first, signal.SIGCONT)

    # The resumed worker finishes its copy of the call, and finds the row taken over.
    wait_until(
        lambda: "taken over by another delivery" in first.log(),
        RESUME_TIMEOUT_S,
        "the resumed worker to give up",
    )
    assert rows(engine, [task_id])[task_id] == row[task_id]
    assert row_counts(engine, [task_id])[task_id] == 1


# Far below production (60 s) so the call can outlast it three times in a test.
SHORT_VISIBILITY_S = 6
LONG_CALL_S = 3 * SHORT_VISIBILITY_S
LONG_CALL = {
    "MCP_VISIBILITY_TIMEOUT": SHORT_VISIBILITY_S,
    "MCP_UNACKED_RESTORE_INTERVAL": 1,
    "MCP_UNACKED_RESTORE_THROTTLE": 1,
    **SLOW_CALLS,
}
LONG_CALL_TIMEOUT_S = LONG_CALL_S + 60.0
_RECEIVED = re.compile(r"Task mcp\.execute_tool\[(\S+)\] received")


@pytest.mark.parametrize("kind", WORKER_KINDS)
def test_a_call_three_times_the_visibility_timeout_is_delivered_once_and_runs_once(
    procs: Procs, redis_server: RedisServer, engine: sa.Engine, kind: str
) -> None:
    server = start_counting_server(procs)
    env = worker_env(redis_server.url(), **LONG_CALL)
    # Two workers: a message restored while the first still runs it would go to the second.
    workers = [start_kind(kind, procs, f"long-{n}", env) for n in range(2)]
    user = unique("long")
    add_service(engine, user, "slow", "streamable_http", server.url)
    task_id = unique("long-call")
    submit_tool(
        user, "slow", "record", {"tag": task_id, "seconds": LONG_CALL_S}, task_id=task_id, app=workers[0].app
    )

    row = wait_final(engine, [task_id], LONG_CALL_TIMEOUT_S, lambda: "\n".join(w.tail() for w in workers))[
        task_id
    ]
    assert row["status"] == "success" and row["attempts"] == 1, row
    assert server.calls()[task_id] == 1
    deliveries = [m for w in workers for m in _RECEIVED.findall(w.log()) if m == task_id]
    assert len(deliveries) == 1, deliveries
