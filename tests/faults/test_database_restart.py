"""Postgres restarted under load, on a private cluster: tasks that could not write their row retry
and finish once the database is back; a row left `running` by a worker that never comes back is
turned into `error` by `worker.execution.audit.mark_stuck` once its lease has run out."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from fault_helpers import (
    PgCluster,
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
from sqlalchemy.orm import Session

from worker.client import submit_tool
from worker.db import schema
from worker.db.models import McpExecution
from worker.execution import audit

pytestmark = pytest.mark.faults

DB_RESTART = {
    "MCP_TASK_SOFT_TIME_LIMIT": 10,
    "MCP_TASK_TIME_LIMIT": 11,
    "MCP_CONNECT_TIMEOUT": 2,
    "MCP_CALL_TIMEOUT": 2,
    "MCP_VISIBILITY_TIMEOUT": 12,
    "MCP_UNACKED_RESTORE_INTERVAL": 1,
    "MCP_UNACKED_RESTORE_THROTTLE": 1,
    # Backoff with full jitter is 0-2, 0-4, 0-8 ... s: five retries outlast a restart.
    "MCP_MAX_RETRIES": 5,
}
TASKS = 60
ROW_TIMEOUT_S = 120.0
STUCK_REASON = "worker died; lease expired (faults test)"


@pytest.fixture
def cluster(procs: Procs) -> Iterator[tuple[PgCluster, sa.Engine]]:
    """A private Postgres cluster, migrated, and an engine on it (disposed at the end)."""
    pg = PgCluster(procs)
    pg.start()
    schema.upgrade(pg.url)
    engine = sa.create_engine(pg.url, pool_pre_ping=True)
    try:
        yield pg, engine
    finally:
        engine.dispose()


def test_postgres_restarted_under_load_every_task_ends_final(
    procs: Procs, redis_server: RedisServer, cluster: tuple[PgCluster, sa.Engine]
) -> None:
    pg, engine = cluster
    server = start_counting_server(procs)
    worker = start_worker(procs, "db-restart", worker_env(redis_server.url(), pg.url, **DB_RESTART))
    user = unique("dbuser")
    add_service(engine, user, "counted", "streamable_http", server.url)

    task_ids = [unique(f"d{i:02d}") for i in range(TASKS)]
    for task_id in task_ids:
        submit_tool(
            user, "counted", "record", {"tag": task_id, "seconds": 0.2}, task_id=task_id, app=worker.app
        )
    wait_until(lambda: by_status(rows(engine, task_ids))["success"] >= 10, 60, "ten tasks done")
    pg.stop("fast")
    try:
        # Down until a task has hit the outage and been sent to retry.
        wait_until(lambda: "Retry in" in worker.log(), 60, "a task to retry on the database outage")
    finally:
        pg.start()

    final = wait_final(engine, task_ids, ROW_TIMEOUT_S, lambda: f"{worker.tail()}\n{pg.log()[-2000:]}")
    assert by_status(final) == {"success": TASKS}, by_status(final)
    assert set(row_counts(engine, task_ids).values()) == {1}
    assert "OperationalError" in worker.log()
    calls = server.calls()
    assert all(calls[t] >= 1 for t in task_ids)
    # Nothing is left running, so there is nothing for the stuck-row sweep to do.
    with Session(engine) as session, session.begin():
        assert audit.mark_stuck(session, datetime.now(UTC), STUCK_REASON) == 0


def _lease_expires_at(engine: sa.Engine, task_id: str) -> datetime | None:
    with engine.connect() as conn:
        value = conn.scalar(sa.select(McpExecution.lease_expires_at).where(McpExecution.task_id == task_id))
    return value


def test_a_row_left_running_by_a_dead_worker_is_marked_error_once_its_lease_runs_out(
    procs: Procs, redis_server: RedisServer, cluster: tuple[PgCluster, sa.Engine]
) -> None:
    pg, engine = cluster
    server = start_counting_server(procs)
    worker = start_worker(procs, "db-stuck", worker_env(redis_server.url(), pg.url, **DB_RESTART))
    user = unique("stuck")
    add_service(engine, user, "counted", "streamable_http", server.url)

    task_id = unique("orphan")
    submit_tool(user, "counted", "record", {"tag": task_id, "seconds": 1.5}, task_id=task_id, app=worker.app)
    wait_until(lambda: server.calls()[task_id] == 1, 60, "the call to reach the server", interval=0.02)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.proc.stop(timeout=10)

    row = rows(engine, [task_id])[task_id]
    assert row["status"] == "running" and row["attempts"] == 1, row
    lease = _lease_expires_at(engine, task_id)
    assert lease is not None
    with Session(engine) as session, session.begin():
        # The lease is live: the holder might still be working, so the sweep leaves the row alone.
        assert audit.mark_stuck(session, datetime.now(UTC), STUCK_REASON) == 0
    wait_until(lambda: datetime.now(UTC) > lease, 60, "the lease to run out", interval=0.2)
    assert rows(engine, [task_id])[task_id]["status"] == "running", "nothing else may touch the row"
    with Session(engine) as session, session.begin():
        assert audit.mark_stuck(session, datetime.now(UTC), STUCK_REASON) == 1

    row = rows(engine, [task_id])[task_id]
    assert row["status"] == "error" and row["error_message"] == STUCK_REASON, row
    assert row["finished_at"] is not None
    with Session(engine) as session, session.begin():
        assert audit.mark_stuck(session, datetime.now(UTC), STUCK_REASON) == 0
