"""Redis restarted under load: producers see each send either return a task id or raise, every
task whose send returned ends in a final row, and the worker reconnects and drains the queue."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from fault_helpers import (
    Procs,
    RedisServer,
    Sent,
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

# Time limits below the visibility timeout; the restore sweep every second (Kombu's default is
# ~100 s) brings back what the worker held when the connection dropped.
BROKER_RESTART = {
    "MCP_TASK_SOFT_TIME_LIMIT": 10,
    "MCP_TASK_TIME_LIMIT": 11,
    "MCP_CONNECT_TIMEOUT": 2,
    "MCP_CALL_TIMEOUT": 2,
    "MCP_VISIBILITY_TIMEOUT": 12,
    "MCP_UNACKED_RESTORE_INTERVAL": 1,
    "MCP_UNACKED_RESTORE_THROTTLE": 1,
}
SENDS = 150
SEND_PAUSE_S = 0.03
ROW_TIMEOUT_S = 60.0


def test_redis_restarted_under_load_loses_no_sent_task(
    procs: Procs, tmp_path: Path, engine: sa.Engine
) -> None:
    broker = RedisServer(procs, tmp_path, appendonly=True).start()
    server = start_counting_server(procs)
    worker = start_worker(procs, "broker-restart", worker_env(broker.url(), **BROKER_RESTART))
    user = unique("producer")
    add_service(engine, user, "counted", "streamable_http", server.url)

    task_ids = [unique(f"s{i:03d}") for i in range(SENDS)]
    # Every tenth call takes a second, so the restart can be timed to land in the middle of one.
    slow = set(task_ids[::10])
    sent = Sent()

    def produce() -> None:
        for task_id in task_ids:
            args = {"tag": task_id, "seconds": 1 if task_id in slow else 0.05}
            try:
                submit_tool(user, "counted", "record", args, task_id=task_id, app=worker.app)
            except Exception as exc:  # a send that raised: counted, and the producer goes on
                sent.failed.append((task_id, f"{type(exc).__name__}: {exc}"))
            else:
                sent.ok.append(task_id)
            time.sleep(SEND_PAUSE_S)

    def mid_call() -> bool:
        if by_status(rows(engine, list(sent.ok)))["success"] < 20:
            return False
        started, ended = server.calls(), server.ended()
        return any(started[t] > ended[t] for t in slow)

    producer = threading.Thread(target=produce, name="producer", daemon=True)
    producer.start()
    try:
        wait_until(mid_call, 60, "twenty tasks done and a one-second call in progress", interval=0.02)
        broker.stop()
        try:
            # Down long enough for a send to give up (Celery retries a publish for about 0.6 s).
            wait_until(lambda: sent.failed, 30, "a send to fail while Redis is down", interval=0.05)
        finally:
            broker.start()
    finally:
        producer.join(timeout=120)
    assert not producer.is_alive(), "the producer hung on a send"
    assert len(sent.ok) + len(sent.failed) == SENDS
    assert sent.failed and len(sent.ok) > SENDS // 2, sent.failed[:5]
    assert all(error.startswith("OperationalError") for _, error in sent.failed), sent.failed[:5]

    final = wait_final(engine, sent.ok, ROW_TIMEOUT_S, lambda: f"{broker.describe()}\n{worker.tail()}")
    assert by_status(final) == {"success": len(sent.ok)}, by_status(final)
    assert set(row_counts(engine, sent.ok).values()) == {1}
    # A send that raised may or may not have reached Redis; if it did, it too ran to the end.
    assert all(r["status"] == "success" for r in rows(engine, [t for t, _ in sent.failed]).values())
    # The worker noticed, reconnected and still answers.
    assert "Connection to broker lost" in worker.log() or "Cannot connect" in worker.log(), worker.tail()
    assert worker.app.control.ping(destination=[worker.hostname], timeout=2)
    # The tool ran at least once for every task (twice only for a call cut off by the outage).
    calls = server.calls()
    assert all(calls[t] >= 1 for t in sent.ok)
