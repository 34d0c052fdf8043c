"""The producer's per-user priorities (`worker.fairness`): while a user's calls wait, the next
ones go out at lower priorities; other users, and users whose calls end as they are sent, keep
the top one; no Redis, no priority. (End to end: tests/faults/test_flood.py.)"""

from __future__ import annotations

import uuid

import redis
from processes import free_port
from testenv import BROKER_URL

from worker import fairness


def test_a_users_calls_step_down_in_priority_while_they_wait_and_come_back_as_they_end() -> None:
    flooder, other = f"flood-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    seen = [fairness.priority_for(flooder, BROKER_URL) for _ in range(2100)]
    first, second, third = (limit for limit, _ in fairness.FAIR_STEPS)
    assert set(seen[:first]) == {0}
    assert set(seen[first:second]) == {3}
    assert set(seen[second:third]) == {6}
    assert set(seen[third:]) == {fairness.LOWEST_PRIORITY}
    assert fairness.priority_for(other, BROKER_URL) == 0
    ttl = redis.Redis.from_url(BROKER_URL).ttl(f"{fairness.PREFIX}{flooder}")
    assert 0 < ttl <= fairness.FAIR_TTL_S
    # As the calls end, the user's next ones climb back to the top.
    for _ in range(2100 - 5):
        fairness.count_off(flooder, BROKER_URL)
    assert fairness.priority_for(flooder, BROKER_URL) == 0


def test_a_user_whose_calls_end_as_they_are_sent_keeps_the_top_priority() -> None:
    steady = f"steady-{uuid.uuid4().hex[:8]}"
    for _ in range(500):
        assert fairness.priority_for(steady, BROKER_URL) == 0
        fairness.count_off(steady, BROKER_URL)
    # Counted off more often than sent (a call delivered twice): the count stops at 0.
    fairness.count_off(steady, BROKER_URL)
    assert int(redis.Redis.from_url(BROKER_URL).get(f"{fairness.PREFIX}{steady}") or 0) == 0


def test_without_redis_a_call_goes_out_at_the_default_priority() -> None:
    assert fairness.priority_for("anyone", f"redis://127.0.0.1:{free_port()}/0") is None
    assert fairness.priority_for("anyone", "filesystem://") is None
