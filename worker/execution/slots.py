"""Per-service concurrency limits that hold across every worker process and host.

A service's slots are a Redis sorted set, `mcp:slots:<service>`: one member per call holding a
slot (its task id), scored with the moment the slot runs out (Redis's own clock, so hosts whose
clocks differ agree). Taking a slot first drops the ones that ran out, in the same script, so a
crashed worker's slots come back within `MCP_LEASE_SECONDS`. One thread per process renews the
slots it holds every third of that. The set lives on the broker's Redis; with another broker (the
embedded file transport) there is no cluster-wide limit, only the per-process one in
`worker.mcp.pool`.

No library: the Redis semaphores on PyPI are unmaintained or keyed on the client's clock; this is
two short scripts over a sorted set, the pattern Redis's own documentation describes.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from worker.errors import ExecutionHeld
from worker.services.config import ServiceConfig, max_concurrency_of
from worker.settings import Settings

logger = logging.getLogger(__name__)

PREFIX = "mcp:slots:"
# Waiting for a slot: first poll soon, then back off to this.
POLL_MIN_S = 0.01
POLL_MAX_S = 0.25
# A call re-queued for want of a slot comes back after a jittered delay that doubles with each
# time it was re-queued, up to REQUEUE_MAX_S: a flood far beyond a service's limit waits in the
# broker instead of cycling through the workers.
REQUEUE_FIRST_S = 0.5
REQUEUE_MAX_S = 30.0

# KEYS[1] the set; ARGV token, limit, ttl seconds. 1 when the token holds a slot afterwards.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(ttl * 2))
  return 1
end
return 0
"""
# KEYS the sets; ARGV[1] ttl, then one token per key. Renews the slots still held.
_RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', until_, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1]) * 2))
end
return #KEYS
"""


class SlotBusy(ExecutionHeld):
    """Every slot of the service stayed taken for as long as a call may wait: re-queue the call
    (not a failed attempt) after `requeue_delay` of the times it was re-queued before."""


def requeue_delay(requeued: int) -> float:
    """Seconds before a call that found no slot `requeued` times already runs again (full jitter
    over the upper half, so re-queued calls do not come back in step)."""
    ceiling = min(REQUEUE_MAX_S, REQUEUE_FIRST_S * 2 ** min(requeued, 16))
    return random.uniform(ceiling / 2, ceiling)


def key_of(config: ServiceConfig) -> str:
    """The service's slot set: its row id, or (a services file) its user and name."""
    return f"{PREFIX}{config.id}" if config.id is not None else f"{PREFIX}file:{config.user_id}:{config.desc}"


class Slots:
    """The slots this process holds, the Redis client they live on, and their renewing thread."""

    def __init__(self, client: redis.Redis, ttl: float) -> None:
        self.client = client
        self.ttl = ttl
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._held: dict[tuple[str, str], int] = {}
        # Threads of this process waiting for a slot, per service.
        self._waiting: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def try_take(self, key: str, token: str, limit: int) -> bool:
        if not self._take(keys=[key], args=[token, limit, self.ttl]):
            return False
        with self._lock:
            self._held[key, token] = self._held.get((key, token), 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mcp-worker-slots", daemon=True)
                self._thread.start()
        return True

    @contextmanager
    def waiting(self, key: str, most: int) -> Iterator[bool]:
        """Whether this thread may wait for one of the service's slots: at most `most` threads of a
        process wait for the same service (`waiters_allowed`); the others try once and are
        re-queued."""
        with self._lock:
            allowed = self._waiting.get(key, 0) < most
            if allowed:
                self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            yield allowed
        finally:
            if allowed:
                with self._lock:
                    self._waiting[key] -= 1

    def release(self, key: str, token: str) -> None:
        with self._lock:
            left = self._held.pop((key, token), 1) - 1
            if left > 0:  # the same task holds it twice (a retry in the same thread): keep it
                self._held[key, token] = left
                return
        try:
            self.client.zrem(key, token)
        except redis.RedisError as exc:
            logger.warning("could not give back a slot of %s (it runs out in %.0f s): %s", key, self.ttl, exc)

    def renew(self) -> int:
        with self._lock:
            held = list(self._held)
        if held:
            self._renew(keys=[k for k, _ in held], args=[self.ttl, *(t for _, t in held)])
        return len(held)

    def _run(self) -> None:
        while True:
            time.sleep(self.ttl / 3)
            try:
                self.renew()
            except redis.RedisError as exc:
                logger.warning("could not renew this process's service slots: %s", exc)


_state: dict[str, Slots | None] = {}
_state_lock = threading.Lock()


def slots_for(settings: Settings) -> Slots | None:
    """This process's slots on the broker's Redis; None with a broker that is not Redis."""
    url = settings.broker_url
    if url in _state:  # every call asks: no lock once the process has its answer
        return _state[url]
    with _state_lock:
        if url not in _state:
            if url.split("://", 1)[0] in ("redis", "rediss", "unix"):
                client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
                _state[url] = Slots(client, settings.lease_seconds)
            else:
                logger.info("the broker is not Redis: service limits hold per worker process only")
                _state[url] = None
        return _state[url]


def waiters_allowed(limit: int, settings: Settings) -> int:
    """How many threads of a process may wait for one service's slots: its limit, or half the
    tools worker's threads if that is more. Calls to a fast service wait briefly and keep their
    turn; one slow service's backlog holds at most half the threads, so the other half still runs
    other users' calls at once (`worker.fairness` puts those ahead in the queue)."""
    return max(limit, settings.tools_concurrency // 2)


@contextmanager
def held(config: ServiceConfig, token: str, settings: Settings) -> Iterator[None]:
    """Hold one of the service's slots for the block, waiting up to MCP_SLOT_WAIT_S for one.

    Raises:
        SlotBusy: no slot came free in time (re-queue the call).
        InvalidService: the service's max_concurrency is not a positive whole number.
    """
    slots = slots_for(settings)
    if slots is None:
        yield
        return
    limit = max_concurrency_of(config, settings)
    key = key_of(config)
    try:
        with slots.waiting(key, waiters_allowed(limit, settings)) as may_wait:
            wait = settings.slot_wait_seconds if may_wait else 0.0
            _wait_for_slot(slots, key, token, limit, wait, config.desc)
    except redis.RedisError as exc:
        # The broker's Redis is down, so no new work arrives either: let this call through rather
        # than fail it for want of a counter.
        logger.warning(
            "service limit of %r not checked (Redis: %s); calling without a slot", config.desc, exc
        )
        yield
        return
    try:
        yield
    finally:
        slots.release(key, token)


def _wait_for_slot(slots: Slots, key: str, token: str, limit: int, wait: float, desc: str) -> None:
    give_up_at = time.monotonic() + wait
    pause = POLL_MIN_S
    while not slots.try_take(key, token, limit):
        left = give_up_at - time.monotonic()
        if left <= 0:
            raise SlotBusy(
                f"service {desc!r} is at its limit of {limit} concurrent calls",
                retry_after=requeue_delay(0),
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, POLL_MAX_S)
