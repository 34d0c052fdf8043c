"""Fairness between users in one queue: a user who sends many calls at once gets a lower priority.

Each tool call a producer sends through `worker.client.submit_tool` counts against its user in a
fixed window (`mcp:fair:<user>`, FAIR_WINDOW_S, one `INCR` on the broker's Redis). Past each
step of FAIR_STEPS the user's further calls in that window go out with the next lower priority,
and Kombu's Redis transport keeps one list per priority and always takes from the highest first
(`worker.broker`'s take script reads them in that order). So a user with a handful of calls is
served next, however many calls another user has queued; within one priority, and so within one
user's calls, the queue stays first in, first out. A flood sent with `send_task` directly (not
through `submit_tool`) has the default (highest) priority, as every call had before.

On Redis, priority 0 is taken first (the reverse of AMQP's meaning); Kombu keeps the steps
0, 3, 6 and 9. With a broker that is not Redis (the embedded default) there is one list and no
priority. A Redis error here sends the call with the default priority rather than refusing it.
"""

from __future__ import annotations

import logging
import threading

import redis

logger = logging.getLogger(__name__)

PREFIX = "mcp:fair:"
FAIR_WINDOW_S = 60
# (calls so far in the window, priority of the next ones): a user's first 20 calls of a minute
# keep the top priority, the next 180 the second, and so on.
FAIR_STEPS = ((20, 0), (200, 3), (2000, 6))
LOWEST_PRIORITY = 9

_clients: dict[str, redis.Redis | None] = {}
_lock = threading.Lock()


def _client(broker_url: str) -> redis.Redis | None:
    if broker_url in _clients:
        return _clients[broker_url]
    with _lock:
        if broker_url not in _clients:
            is_redis = broker_url.split("://", 1)[0] in ("redis", "rediss", "unix")
            _clients[broker_url] = (
                redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
                if is_redis
                else None
            )
        return _clients[broker_url]


def priority_of(count: int) -> int:
    """The priority of a user's `count`-th call in the window (1 is the first)."""
    for limit, priority in FAIR_STEPS:
        if count <= limit:
            return priority
    return LOWEST_PRIORITY


def priority_for(user_id: str, broker_url: str) -> int | None:
    """Count one more call of `user_id` and return its priority; None when the broker is not
    Redis (no priorities) or Redis could not be asked."""
    client = _client(broker_url)
    if client is None:
        return None
    key = f"{PREFIX}{user_id}"
    try:
        with client.pipeline(transaction=False) as pipe:
            count, _ = pipe.incr(key).expire(key, FAIR_WINDOW_S, nx=True).execute()
    except redis.RedisError as exc:
        logger.warning("could not count the calls of user %r (%s); sending at the default priority", user_id, exc)
        return None
    return priority_of(int(count))
