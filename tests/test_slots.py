"""The cluster-wide service limit (`worker.execution.slots`) on a real Redis: it holds, a live
holder keeps its slot past the slot's lifetime, a SIGKILLed holder's slots come back, a call that
finds none waits a bounded time and is told to re-queue, and a bad `max_concurrency` is refused."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from processes import spawn, wait_until
from testenv import BROKER_URL, LOG_DIR

from worker.errors import InvalidService
from worker.execution import slots
from worker.processes import free_port
from worker.services.config import ServiceConfig, validate_record
from worker.settings import Settings

TTL_S = 1.5


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(BROKER_URL)
    yield c
    c.close()


def key() -> str:
    return f"{slots.PREFIX}test:{uuid.uuid4().hex}"


def config(**params: object) -> ServiceConfig:
    return ServiceConfig(
        user_id="u",
        desc="limited",
        mode="streamable_http",
        url="http://x/mcp",
        endpoint=None,
        api_key="",
        params=params,
    )


def test_the_limit_holds_and_a_released_slot_is_taken_again(client: redis.Redis) -> None:
    held = slots.Slots(client, TTL_S)
    k = key()
    assert [held.try_take(k, f"t{i}", 3) for i in range(4)] == [True, True, True, False]
    assert held.try_take(k, "t0", 3), "a holder asking again keeps its slot"
    held.release(k, "t0")
    held.release(k, "t0")
    assert held.try_take(k, "t9", 3)
    assert client.zcard(k) == 3


def test_a_live_holder_keeps_its_slot_past_the_slot_lifetime(client: redis.Redis) -> None:
    k = key()
    holder, other = slots.Slots(client, TTL_S), slots.Slots(client, TTL_S)
    assert holder.try_take(k, "live", 1)
    time.sleep(TTL_S * 2.5)  # renewed every TTL_S / 3 by the holder's thread
    assert not other.try_take(k, "late", 1)
    holder.release(k, "live")
    assert other.try_take(k, "late", 1)


def test_a_killed_holders_slots_come_back_within_their_lifetime(client: redis.Redis) -> None:
    k = key()
    script = (
        "import time, redis; from worker.execution import slots; "
        f"s = slots.Slots(redis.Redis.from_url({BROKER_URL!r}), {TTL_S}); "
        f"assert s.try_take({k!r}, 'a', 2) and s.try_take({k!r}, 'b', 2); print('held', flush=True); time.sleep(600)"
    )
    child = spawn(
        f"slot-holder-{uuid.uuid4().hex[:6]}", [sys.executable, "-c", script], {}, LOG_DIR, fresh_log=True
    )
    try:
        child.wait_for(lambda: "held" in child.log(), 30, "the holder to take its slots")
        assert not slots.Slots(client, TTL_S).try_take(k, "c", 2)
    finally:
        child.kill_group()
    killed = time.monotonic()
    taker = slots.Slots(client, TTL_S)
    wait_until(
        lambda: taker.try_take(k, "c", 2) and taker.try_take(k, "d", 2), TTL_S * 4, "the slots to come back"
    )
    assert time.monotonic() - killed <= TTL_S + 1.0


def test_a_call_that_finds_no_slot_waits_then_is_told_to_requeue(client: redis.Redis) -> None:
    settings = Settings.from_env({"CELERY_BROKER_URL": BROKER_URL, "MCP_SLOT_WAIT_S": "0.3"})
    limited = config(max_concurrency=1)
    with slots.held(limited, "first", settings):
        started = time.monotonic()
        with (
            pytest.raises(slots.SlotBusy, match="at its limit of 1") as busy,
            slots.held(limited, "second", settings),
        ):
            pass
        assert time.monotonic() - started >= 0.3
        assert slots.REQUEUE_FIRST_S / 2 <= busy.value.retry_after <= slots.REQUEUE_FIRST_S
    with slots.held(limited, "second", settings):  # the first gave its slot back
        pass


def test_no_more_threads_wait_for_a_service_than_allowed(client: redis.Redis) -> None:
    # Two threads: one may wait for the service's one slot (half the threads, or its limit).
    settings = Settings.from_env(
        {"CELERY_BROKER_URL": BROKER_URL, "MCP_SLOT_WAIT_S": "5", "MCP_TOOLS_CONCURRENCY": "2"}
    )
    assert slots.waiters_allowed(1, settings) == 1
    assert slots.waiters_allowed(1, Settings.from_env({"MCP_TOOLS_CONCURRENCY": "200"})) == 100
    assert slots.waiters_allowed(150, Settings.from_env({"MCP_TOOLS_CONCURRENCY": "200"})) == 150
    limited = config(max_concurrency=1)
    waiting = threading.Event()
    outcome: list[BaseException] = []

    def wait_for_the_slot() -> None:
        waiting.set()
        try:
            with slots.held(limited, "waiter", settings):
                pass
        except BaseException as exc:
            outcome.append(exc)

    with slots.held(limited, "holder", settings):
        waiter = threading.Thread(target=wait_for_the_slot)
        waiter.start()
        waiting.wait(5)
        time.sleep(0.2)  # the waiter is inside its wait now
        started = time.monotonic()
        # The one thread allowed to wait is waiting: this one tries once and is re-queued at once.
        with pytest.raises(slots.SlotBusy), slots.held(limited, "third", settings):
            pass
        assert time.monotonic() - started < 5
    waiter.join(10)
    assert outcome == []  # the waiter got the slot once the holder gave it back


def test_the_requeue_delay_doubles_up_to_its_cap() -> None:
    for requeued in range(12):
        ceiling = min(slots.REQUEUE_MAX_S, slots.REQUEUE_FIRST_S * 2**requeued)
        delays = [slots.requeue_delay(requeued) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (requeued, delays)
    assert slots.requeue_delay(10_000) <= slots.REQUEUE_MAX_S


def test_redis_down_lets_the_call_through(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    ran = False
    with slots.held(config(), "t", settings):
        ran = True
    assert ran and "not checked" in caplog.text


@pytest.mark.parametrize("bad", [0, -1, 2.5, "5", True])
def test_a_bad_max_concurrency_is_refused_when_saved(bad: object) -> None:
    record = {
        "user_id": "u",
        "desc": "d",
        "interaction_mode": "sse",
        "url": "http://h/sse",
        "api_key": "k",
        "params": {"max_concurrency": bad},
    }
    with pytest.raises(InvalidService, match="max_concurrency must be a whole number"):
        validate_record(record)


def test_max_concurrency_is_the_workers_not_a_tool_argument() -> None:
    assert "max_concurrency" not in config(max_concurrency=3, project_id=1).tool_defaults
