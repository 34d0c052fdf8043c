"""The connection pool's liveness check and the hot path's one retry on a dead connection.

A pooled connection is pinged only when it sat idle longer than `DB_POOL_PING_IDLE_S`; one that
dies inside that window fails its statement as a disconnect, and `engine.autocommit` (the
claim and the success write) then runs once more on a new connection. Connections are cut here
the way a database restart cuts them: `pg_terminate_backend` on the server side.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool
from testenv import DEMO_HTTP_TOKEN

from worker.db import engine
from worker.db.engine import get_engine, session_scope
from worker.execution import audit
from worker.execution.call import run_tool_call
from worker.services.store import save_service


def _backend_pid(connection: Connection) -> int:
    return int(connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _cut(pid: int) -> None:
    """Terminate one server backend from a connection outside the pool, and wait until it is gone."""
    admin = sa.create_engine(get_engine().url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            assert connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            for _ in range(200):
                alive = connection.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                ).scalar()
                if not alive:
                    return
                time.sleep(0.01)
        raise AssertionError(f"backend {pid} did not go away")
    finally:
        admin.dispose()


def test_a_connection_cut_while_idle_is_replaced_before_it_is_handed_out(
    one_connection: Callable[[float], None],
) -> None:
    one_connection(0.05)
    with get_engine().connect() as connection:
        first = _backend_pid(connection)
    _cut(first)
    time.sleep(0.1)  # past the window: the next checkout pings, finds it dead, opens another
    with get_engine().connect() as connection:
        second = _backend_pid(connection)
    assert second != first


def test_inside_the_window_a_cut_connection_fails_its_statement_as_a_disconnect(
    one_connection: Callable[[float], None],
) -> None:
    one_connection(60)
    with get_engine().connect() as connection:
        first = _backend_pid(connection)
    _cut(first)
    with pytest.raises(sa.exc.DBAPIError) as caught, get_engine().connect() as connection:
        _backend_pid(connection)
    assert caught.value.connection_invalidated
    # The pool threw the dead connection away: the next checkout is a new one.
    with get_engine().connect() as connection:
        assert _backend_pid(connection) != first


def test_the_hot_path_runs_once_more_on_a_new_connection(
    one_connection: Callable[[float], None], caplog: pytest.LogCaptureFixture
) -> None:
    one_connection(60)
    first = engine.autocommit(_backend_pid)
    _cut(first)
    with caplog.at_level(logging.WARNING, logger="worker.db.engine"):
        second = engine.autocommit(_backend_pid)
    assert second != first
    assert "database connection was lost" in caplog.text


def test_other_database_errors_are_not_retried(one_connection: Callable[[float], None]) -> None:
    one_connection(60)
    calls: list[int] = []

    def broken(connection: Connection) -> None:
        calls.append(1)
        connection.execute(sa.text("SELECT no_such_column FROM mcp_executions"))

    with pytest.raises(sa.exc.ProgrammingError):
        engine.autocommit(broken)
    assert len(calls) == 1


def test_a_tool_call_after_a_cut_records_its_row(
    one_connection: Callable[[float], None], demo_http: str
) -> None:
    one_connection(60)
    user = f"cut-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "pm",
                "interaction_mode": "streamable_http",
                "url": demo_http,
                "api_key": DEMO_HTTP_TOKEN,
            },
        )
    with get_engine().connect() as connection:
        pid = _backend_pid(connection)
    _cut(pid)
    task_id = str(uuid.uuid4())
    outcome = run_tool_call(
        task_id=task_id,
        user_id=user,
        service="pm",
        tool="echo",
        arguments={"message": "after the cut"},
        final_attempt=True,
    )
    assert outcome.status == "success"
    with session_scope() as session:
        row = audit.get(session, task_id)
        assert row is not None
        assert (row.status, row.attempts, row.result) == ("success", 1, outcome.result)
