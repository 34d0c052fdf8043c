"""The hot path's statements as PostgreSQL prepared statements (`worker.db.prepared`).

Each pooled connection prepares the claim and the success write once; a connection that lost them
(a new server backend behind a pooler, here `DEALLOCATE ALL`) prepares them again, a replaced
connection starts afresh, and with DB_PREPARED_STATEMENTS off or inside a caller's transaction
nothing is prepared. The rows are the same either way.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from test_db_pool import _backend_pid, _cut

from worker.db import engine
from worker.db.engine import get_engine, session_scope
from worker.execution import audit
from worker.execution.claim import Claim, claim
from worker.services.store import save_service
from worker.settings import get_settings

PREPARED = sa.text("SELECT name, prepare_time FROM pg_prepared_statements ORDER BY name")


def _service(user: str) -> None:
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "prep-pm",
                "interaction_mode": "http",
                "url": "http://127.0.0.1:9/mcp",
                "api_key": "prep-key-0001",
                "params": {"project_id": 7},
            },
        )


@pytest.fixture
def user(one_connection: Callable[[float], None]) -> str:
    """A user with the service `prep-pm`, on a pool of one connection (so each checkout is the same)."""
    one_connection(60)
    name = f"prep-{uuid.uuid4().hex[:6]}"
    _service(name)
    return name


def _call(connection: Connection, user: str, task_id: str) -> tuple[Claim, dict[str, datetime]]:
    """The hot path's two statements, as `run_tool_call` runs them; then what is prepared."""
    values = audit.claim_values(
        task_id=task_id,
        user_id=user,
        service="prep-pm",
        tool="echo",
        params={"message": "hi"},
        owner="owner-a",
        lease_seconds=60,
    )
    begun = claim(connection, values, get_settings())
    recorded = audit.succeed(
        connection, task_id, result=["hi"], elapsed_ms=2, owner="owner-a", params={"message": "hi", "n": 1}
    )
    assert recorded
    return begun, {row.name: row.prepare_time for row in connection.execute(PREPARED)}


def _row(task_id: str) -> dict[str, Any]:
    with session_scope() as session:
        row = audit.get(session, task_id)
        assert row is not None
        return audit.as_dict(row)


def _check(begun: Claim, user: str, task_id: str) -> None:
    assert begun.claimed and begun.row.attempts == 1
    config = begun.service
    assert config is not None and config.user_id == user
    assert (config.api_key, config.tool_defaults) == ("prep-key-0001", {"project_id": 7})
    row = _row(task_id)
    assert (row["status"], row["result"], row["params"]) == ("success", ["hi"], {"message": "hi", "n": 1})


def test_each_connection_prepares_the_two_hot_statements_once(
    one_connection: Callable[[float], None],
) -> None:
    one_connection(60)
    user = f"prep-{uuid.uuid4().hex[:6]}"
    _service(user)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    begun, prepared = engine.autocommit(lambda c: _call(c, user, first))
    _check(begun, user, first)
    assert len(prepared) == 2 and all(name.startswith("mcpw_") for name in prepared)
    begun, again = engine.autocommit(lambda c: _call(c, user, second))
    _check(begun, user, second)
    assert again == prepared  # the same statements, not prepared a second time


def test_a_connection_that_lost_its_statements_prepares_them_again(user: str) -> None:
    engine.autocommit(lambda c: _call(c, user, str(uuid.uuid4())))
    # What a pooler in transaction mode does: the next statement meets a server without them.
    engine.autocommit(lambda c: c.exec_driver_sql("DEALLOCATE ALL"))
    task_id = str(uuid.uuid4())
    begun, prepared = engine.autocommit(lambda c: _call(c, user, task_id))
    _check(begun, user, task_id)
    assert len(prepared) == 2


def test_a_replaced_connection_prepares_afresh(user: str) -> None:
    engine.autocommit(lambda c: _call(c, user, str(uuid.uuid4())))
    first = engine.autocommit(_backend_pid)
    _cut(first)
    task_id = str(uuid.uuid4())
    begun, prepared = engine.autocommit(lambda c: _call(c, user, task_id))
    _check(begun, user, task_id)
    assert len(prepared) == 2
    assert engine.autocommit(_backend_pid) != first


def test_turned_off_nothing_is_prepared(
    one_connection: Callable[[float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_PREPARED_STATEMENTS", "false")
    one_connection(60)
    user = f"prep-{uuid.uuid4().hex[:6]}"
    _service(user)
    task_id = str(uuid.uuid4())
    begun, prepared = engine.autocommit(lambda c: _call(c, user, task_id))
    _check(begun, user, task_id)
    assert prepared == {}


def test_inside_a_transaction_nothing_is_prepared(user: str) -> None:
    # A failed EXECUTE would abort the caller's transaction, so only autocommit work is prepared.
    task_id = str(uuid.uuid4())
    with get_engine().begin() as connection:
        begun, prepared = _call(connection, user, task_id)
    _check(begun, user, task_id)
    assert prepared == {}
