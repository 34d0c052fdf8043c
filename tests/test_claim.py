"""The execution claim on PostgreSQL, with the service lookup folded into the same statement."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session

from worker import executions, registry
from worker.errors import ServiceNotFound
from worker.registry import save_service


def _claim(session: Session, task_id: str, user: str, desc: str, owner: str = "owner-a") -> executions.Begun:
    return executions.begin(
        session,
        task_id=task_id,
        user_id=user,
        service=desc,
        tool="echo",
        params={"message": "hi"},
        owner=owner,
        lease_seconds=60,
        lookup=registry.LOOKUP,
    )


def _service(session: Session, user: str, key: str, **extra: Any) -> None:
    save_service(
        session,
        {
            "user_id": user,
            "desc": "shared-pm",
            "interaction_mode": "http",
            "url": "http://127.0.0.1:9/mcp",
            "api_key": key,
            **extra,
        },
    )


def test_the_claim_brings_the_users_and_the_global_row(db_session: Session) -> None:
    user = f"erin-{uuid.uuid4().hex[:6]}"
    _service(db_session, "global", "global-key-0001")
    _service(db_session, user, "erin-key-0001", params={"project_id": 3})

    begun = _claim(db_session, str(uuid.uuid4()), user, "shared-pm")
    assert begun.claimed and begun.attempts == 1
    assert begun.looked_up is not None
    assert sorted(row[1] for row in begun.looked_up) == sorted(["global", user])
    chosen = registry.from_rows(begun.looked_up, user, "shared-pm")
    assert (chosen.user_id, chosen.api_key, chosen.tool_defaults) == (
        user,
        "erin-key-0001",
        {"project_id": 3},
    )
    # Another user sees the global row; the answer is what `resolve` gives.
    other = _claim(db_session, str(uuid.uuid4()), "someone-else", "shared-pm")
    assert other.looked_up is not None
    assert registry.from_rows(other.looked_up, "someone-else", "shared-pm") == registry.resolve(
        "someone-else", "shared-pm", db_session
    )


def test_a_claim_for_an_unknown_service_still_claims_and_finds_nothing(db_session: Session) -> None:
    task_id = str(uuid.uuid4())
    begun = _claim(db_session, task_id, "frank", "no-such-service")
    assert begun.claimed and begun.looked_up == ()
    with pytest.raises(ServiceNotFound):
        registry.from_rows(begun.looked_up, "frank", "no-such-service")
    row = executions.get(db_session, task_id)
    assert row is not None and row.status == "running"


def test_a_row_held_by_another_owner_is_not_claimed_and_nothing_is_looked_up(db_session: Session) -> None:
    task_id = str(uuid.uuid4())
    _service(db_session, "global", "global-key-0001")
    assert _claim(db_session, task_id, "gina", "shared-pm", owner="owner-a").claimed
    held = _claim(db_session, task_id, "gina", "shared-pm", owner="owner-b")
    assert not held.claimed and held.held_until is not None and held.looked_up is None
    again = _claim(db_session, task_id, "gina", "shared-pm", owner="owner-a")
    assert again.claimed and again.attempts == 2 and again.looked_up is not None
