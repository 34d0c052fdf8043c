"""The execution claim on PostgreSQL, with the service lookup folded into the same statement."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from worker.errors import ServiceNotFound
from worker.execution import audit
from worker.execution.claim import Claim, claim
from worker.services import registry
from worker.services.store import save_service
from worker.settings import get_settings


def _claim(session: Session, task_id: str, user: str, desc: str, owner: str = "owner-a") -> Claim:
    values = audit.claim_values(
        task_id=task_id,
        user_id=user,
        service=desc,
        tool="echo",
        params={"message": "hi"},
        owner=owner,
        lease_seconds=60,
    )
    return claim(session.connection(), values, get_settings())


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

    claimed = _claim(db_session, str(uuid.uuid4()), user, "shared-pm")
    assert claimed.claimed and claimed.row.attempts == 1 and claimed.service_error is None
    chosen = claimed.service
    assert chosen is not None
    assert (chosen.user_id, chosen.api_key, chosen.tool_defaults) == (
        user,
        "erin-key-0001",
        {"project_id": 3},
    )
    # Another user sees the global row; the answer is what `resolve` gives.
    other = _claim(db_session, str(uuid.uuid4()), "someone-else", "shared-pm")
    assert other.service == registry.resolve("someone-else", "shared-pm", db_session)


def test_a_claim_for_an_unknown_service_still_claims_and_says_why(db_session: Session) -> None:
    task_id = str(uuid.uuid4())
    claimed = _claim(db_session, task_id, "frank", "no-such-service")
    assert claimed.claimed and claimed.service is None
    assert isinstance(claimed.service_error, ServiceNotFound)
    row = audit.get(db_session, task_id)
    assert row is not None and row.status == "running"


def test_a_row_held_by_another_owner_is_not_claimed_and_nothing_is_looked_up(db_session: Session) -> None:
    task_id = str(uuid.uuid4())
    _service(db_session, "global", "global-key-0001")
    assert _claim(db_session, task_id, "gina", "shared-pm", owner="owner-a").claimed
    held = _claim(db_session, task_id, "gina", "shared-pm", owner="owner-b")
    assert not held.claimed and held.row.held_until is not None
    assert held.service is None and held.service_error is None
    again = _claim(db_session, task_id, "gina", "shared-pm", owner="owner-a")
    assert again.claimed and again.row.attempts == 2 and again.service is not None
