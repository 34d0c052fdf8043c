"""The producer's per-user priorities (`worker.fairness`): a user's calls beyond each step of a
minute go out at the next lower priority; other users keep the top one; no Redis, no priority."""

from __future__ import annotations

import uuid

import redis
from processes import free_port
from testenv import BROKER_URL

from worker import fairness


def test_a_users_calls_step_down_in_priority_and_other_users_keep_the_top() -> None:
    flooder, other = f"flood-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    seen = [fairness.priority_for(flooder, BROKER_URL) for _ in range(2100)]
    first, second, third = (limit for limit, _ in fairness.FAIR_STEPS)
    assert set(seen[:first]) == {0}
    assert set(seen[first:second]) == {3}
    assert set(seen[second:third]) == {6}
    assert set(seen[third:]) == {fairness.LOWEST_PRIORITY}
    assert fairness.priority_for(other, BROKER_URL) == 0
    # The count lives for one window, then the user starts at the top again.
    ttl = redis.Redis.from_url(BROKER_URL).ttl(f"{fairness.PREFIX}{flooder}")
    assert 0 < ttl <= fairness.FAIR_WINDOW_S


def test_without_redis_a_call_goes_out_at_the_default_priority() -> None:
    assert fairness.priority_for("anyone", f"redis://127.0.0.1:{free_port()}/0") is None
    assert fairness.priority_for("anyone", "filesystem://") is None
