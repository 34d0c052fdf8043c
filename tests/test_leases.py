"""Execution leases: renewed while their call runs, freed when the holder is known dead, and
fencing a holder that lost its lease out of the row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from processes import wait_until

from worker.db.engine import autocommit, session_scope
from worker.execution import audit, leases

WAIT_S = 20.0


def _claim(task_id: str, owner: str, lease_seconds: float) -> audit.Begun:
    values = audit.claim_values(
        task_id=task_id,
        user_id="lease-user",
        service="pm",
        tool="echo",
        params={},
        owner=owner,
        lease_seconds=lease_seconds,
    )
    return autocommit(lambda connection: audit.begin(connection, values))


def _row(task_id: str) -> dict[str, Any]:
    with session_scope() as session:
        row = audit.get(session, task_id)
        assert row is not None
        expires = row.lease_expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return {"status": row.status, "owner": row.lease_owner, "expires": expires, "result": row.result}


def _succeed(task_id: str, owner: str, result: Any) -> bool:
    return autocommit(
        lambda connection: audit.succeed(connection, task_id, result=result, elapsed_ms=1, owner=owner)
    )


def test_renew_moves_only_the_leases_their_owner_still_holds() -> None:
    mine, stolen, done = (str(uuid.uuid4()) for _ in range(3))
    for task_id in (mine, stolen, done):
        assert _claim(task_id, "owner-a", lease_seconds=5).claimed
    assert _succeed(done, "owner-a", "ok")

    later = datetime.now(UTC) + timedelta(seconds=600)
    renewed = leases.renew([(mine, "owner-a"), (stolen, "owner-b"), (done, "owner-a")], 30, now=later)
    assert renewed == 1
    assert _row(mine)["expires"] > later
    assert _row(stolen)["expires"] < later
    assert _row(done)["expires"] is None


def test_a_holder_that_lost_its_lease_records_nothing() -> None:
    task_id = str(uuid.uuid4())
    assert _claim(task_id, "stopped-worker", lease_seconds=-1).claimed  # its lease has run out
    assert _claim(task_id, "second-worker", lease_seconds=30).claimed
    assert _succeed(task_id, "second-worker", "first outcome")
    # The stopped worker resumes and finishes its copy of the call.
    assert not _succeed(task_id, "stopped-worker", "second outcome")
    with session_scope() as session:
        failed = audit.fail(
            session, task_id, message="late", elapsed_ms=1, final=True, owner="stopped-worker"
        )
    assert not failed
    assert _row(task_id)["status"] == "success" and _row(task_id)["result"] == "first outcome"


def test_the_keeper_renews_a_held_lease_until_it_is_released() -> None:
    task_id = str(uuid.uuid4())
    lease_s = 3.0  # the shortest allowed: renewed every second
    assert _claim(task_id, "keeper-owner", lease_seconds=lease_s).claimed
    first = _row(task_id)["expires"]

    with leases.kept(task_id, "keeper-owner", lease_s):
        wait_until(lambda: _row(task_id)["expires"] > first + timedelta(seconds=1), WAIT_S, "a renewal")
        assert (task_id, "keeper-owner") in leases.keeper(lease_s).held()
    assert (task_id, "keeper-owner") not in leases.keeper(lease_s).held()


def test_a_lost_holders_lease_is_freed_for_the_redelivery() -> None:
    task_id = str(uuid.uuid4())
    assert _claim(task_id, "dead-pool-process", lease_seconds=300).claimed
    assert not _claim(task_id, "redelivery", lease_seconds=30).claimed

    assert leases.release_lost(task_id)
    assert _claim(task_id, "redelivery", lease_seconds=30).claimed
    assert _row(task_id)["owner"] == "redelivery"
    assert not leases.release_lost(str(uuid.uuid4()))
