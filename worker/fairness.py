"""Fairness between users in one queue: a user with many calls waiting gets a lower priority.

Each tool call a producer sends through `worker.client.submit_tool` counts one more for its user
(`mcp:fair:<user>`, an `INCR` on the broker's Redis) and carries the FAIR_HEADER; the worker
counts it off when the call ends (success or final failure, not a retry or a re-queue for a
slot). Past each step of FAIR_STEPS of a user's calls not yet ended, further calls go out at the
next lower priority, and Kombu's Redis transport keeps one list per priority and always takes
from the highest first (`worker.broker`'s take script reads them in that order). So a user with a
few calls is served next, however many calls another user has queued; within one priority, and
so within one user's calls, the queue stays first in, first out. A user whose calls end as fast
as they are sent (one at a time, or a few in parallel) never leaves the top priority.

The count is a hint, not a ledger: a call whose message was purged never counts off (the key
expires FAIR_TTL_S after the user's last call), and a call delivered twice counts off twice
(the count stops at 0). A flood sent with `send_task` directly (not through `submit_tool`) has
the default (highest) priority, as every call had before.

On Redis, priority 0 is taken first (the reverse of AMQP's meaning); Kombu keeps the steps
0, 3, 6 and 9. With a broker that is not Redis (the embedded default) there is one list and no
priority. A Redis error here sends the call with the default priority rather than refusing it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when first used: `import worker.client` stays light for producers
    import redis

logger = logging.getLogger(__name__)

PREFIX = "mcp:fair:"
# The message header that says the call was counted (its end counts it off).
FAIR_HEADER = "mcp_fair"
FAIR_TTL_S = 600
# (calls of the user not yet ended, priority of the next one): with up to 20 waiting a user's
# calls keep the top priority, up to 200 the second, up to 2,000 the third, then the lowest.
FAIR_STEPS = ((20, 0), (200, 3), (2000, 6))
LOWEST_PRIORITY = 9

# KEYS[1] the user's count. Counts one call off, never below 0.
_COUNT_OFF = """
local left = redis.call('DECR', KEYS[1])
if left < 0 then
  redis.call('SET', KEYS[1], 0, 'KEEPTTL')
  return 0
end
return left
"""

_clients: dict[str, redis.Redis | None] = {}
_lock = threading.Lock()


def _client(broker_url: str) -> redis.Redis | None:
    if broker_url in _clients:
        return _clients[broker_url]
    with _lock:
        if broker_url not in _clients:
            client = None
            if broker_url.split("://", 1)[0] in ("redis", "rediss", "unix"):
                import redis

                client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
            _clients[broker_url] = client  # whole, once: readers take no lock
        return _clients[broker_url]


def _redis_errors() -> type[Exception]:
    import redis

    return redis.RedisError


def priority_of(count: int) -> int:
    """The priority of a call that makes `count` of its user's calls not yet ended (1 is alone)."""
    for limit, priority in FAIR_STEPS:
        if count <= limit:
            return priority
    return LOWEST_PRIORITY


def priority_for(user_id: str, broker_url: str) -> int | None:
    """Count one more call of `user_id` and return its priority; None when the broker is not
    Redis (no priorities, nothing counted) or Redis could not be asked."""
    client = _client(broker_url)
    if client is None:
        return None
    key = f"{PREFIX}{user_id}"
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, FAIR_TTL_S)
            count, _ = pipe.execute()
    except _redis_errors() as exc:
        logger.warning(
            "could not count the calls of user %r (%s); sending at the default priority", user_id, exc
        )
        return None
    return priority_of(int(count))


def count_off(user_id: str, broker_url: str) -> None:
    """One call of `user_id` (sent with FAIR_HEADER) has ended."""
    client = _client(broker_url)
    if client is None:
        return
    try:
        client.eval(_COUNT_OFF, 1, f"{PREFIX}{user_id}")
    except _redis_errors() as exc:
        logger.warning("could not count off a call of user %r (%s)", user_id, exc)
