"""Kombu's Redis transport, with a worker that takes a message and records it as unacknowledged
in one atomic step.

Kombu's stock consumer takes a message with `BRPOP` and records it in the `unacked` hash with a
second command once the reply has been read (kombu#305). A worker whose main process dies in
between (SIGKILL, OOM, a lost machine) leaves the message in neither place: it is gone for good.
Under load that window is open often enough for a whole-worker kill to lose a message now and then
(seen in `tests/faults/test_worker_killed.py`).

Here the take is a Lua script: it pops the message and writes it to `unacked` and its index, as
`QoS.append` would, inside Redis. Once Redis has taken a message, it is recorded, and the
visibility-timeout sweep brings it back if the worker dies. When every queue is empty, the channel
waits with `BLMOVE key key RIGHT RIGHT` (Redis >= 6.2), which blocks until the key has a message
but leaves it where it was, and then takes it with the script. The wait watches one key at a
time, the default-priority key of each consumed queue in turn: a message on another queue or with
a non-default priority, arriving while the worker is idle, waits up to the poll timeout (1 s).

While a worker lives, it keeps its messages alive: every quarter of the visibility timeout the
worker's main process moves the unacked-index entry of every message it holds (running, waiting
for a pool slot, or waiting for its countdown) to the current time, so the restore sweep never
hands a message of a live worker to another one, however long its task runs, and the visibility
timeout can be short: it bounds only how long the messages of a dead or stopped worker wait.
`ZADD XX` only touches entries that still exist, so an ack that lands first is never undone.

`install()` makes this the transport of `redis://` and `rediss://` URLs (`sentinel://` keeps
Kombu's) in the process, so the URL, and the tools that read it (Flower's queue lengths), stay as
they are. Producers that do not load this app keep the stock transport: the message format and
queue keys are unchanged. With a `global_keyprefix`, or a Redis that refuses `EVAL` or `BLMOVE`,
the stock take is used.
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import NoPermissionError, ResponseError

logger = logging.getLogger(__name__)

# KEYS: the queue keys in the order to try, then the unacked index (a sorted set) and the unacked
# hash. ARGV[1]: the time to record. Returns {key, message, 1} when the message was recorded,
# {key, message, 0} when it could not be parsed (the client then records it as Kombu does), or
# false when every queue is empty. The unacked entry is `[message, exchange, routing_key]`, the
# JSON Kombu's QoS.append writes, with the message's own text inside it untouched.
TAKE = """
local queues = #KEYS - 2
for i = 1, queues do
    local item = redis.call('RPOP', KEYS[i])
    if item then
        local ok, message = pcall(cjson.decode, item)
        local properties = ok and type(message) == 'table' and message['properties']
        local tag = type(properties) == 'table' and properties['delivery_tag']
        local info = type(properties) == 'table' and properties['delivery_info']
        if type(tag) == 'string' and type(info) == 'table' then
            redis.call('ZADD', KEYS[queues + 1], ARGV[1], tag)
            redis.call('HSET', KEYS[queues + 2], tag, '[' .. item .. ',' ..
                cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
            return {KEYS[i], item, 1}
        end
        return {KEYS[i], item, 0}
    end
end
return false
"""


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.recorded_by_take(delivery_tag):
            # Already in `unacked` (the take wrote it): only the in-memory bookkeeping is left.
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._taken: set[str] = set()
        # The command whose reply `_brpop_read` parses: TAKE (EVAL) or the wait (BLMOVE).
        self._pending: str | None = None
        self._take_next = True
        self._wait_turn = 0
        # Set when Redis refuses the script or BLMOVE (older than 6.2, or an ACL without them).
        self._stock_take = False

    def recorded_by_take(self, delivery_tag: str) -> bool:
        """True once for a message the take script recorded in `unacked` itself."""
        if delivery_tag in self._taken:
            self._taken.discard(delivery_tag)
            return True
        return False

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.global_keyprefix or self._stock_take:
            self._pending = None
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if self._take_next:
            keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
            keys += [self.unacked_index_key, self.unacked_key]
            command: list[Any] = ["EVAL", TAKE, len(keys), *keys, repr(time.time())]
        else:
            key = self._q_for_pri(queues[self._wait_turn % len(queues)], 0)
            self._wait_turn += 1
            command = ["BLMOVE", key, key, "RIGHT", "RIGHT", timeout or 0]
        self._pending = command[0]
        # The poller's bookkeeping, as Kombu's _brpop_start keeps it (Kombu declares both
        # attributes with their idle values' types, hence the ignores).
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        if self._pending is None:
            return bool(super()._brpop_read(**options))
        try:
            try:
                reply = self.client.parse_response(self.client.connection, self._pending, **options)
            except self.connection_errors:
                # As Kombu does: the next poll reconnects. A take whose reply was lost is in
                # `unacked` and comes back after the visibility timeout.
                self.client.connection.disconnect()
                self._take_next = True
                raise
            except ResponseError as exc:
                self._take_next = True
                if not _refused(exc):
                    raise  # READONLY, OOM, MISCONF ...: as Kombu's BRPOP would meet them
                # Nothing was taken (Redis refused the command itself): go on with Kombu's take.
                logger.error(
                    "Redis refused %s (%s): falling back to Kombu's take, which loses a message "
                    "taken at the instant a worker is killed; use Redis 6.2 or later and allow "
                    "EVAL and BLMOVE",
                    self._pending,
                    exc,
                )
                self._stock_take = True
                raise Empty() from None
            if self._pending == "BLMOVE":
                # A message is there (or the wait timed out): take on the next poll.
                self._take_next = True
                raise Empty()
            if not reply:
                self._take_next = False
                raise Empty()
            key, item, recorded = reply
            message = loads(bytes_to_str(item))
            if int(recorded):
                self._taken.add(message["properties"]["delivery_tag"])
            queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self.connection._deliver(message, queue)
            return True
        finally:
            self._pending = None
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()


def _refused(error: ResponseError) -> bool:
    """True when Redis does not have the command or the ACL does not allow it."""
    return isinstance(error, NoPermissionError) or "unknown command" in str(error).lower()


# A live worker refreshes its messages this many times per visibility timeout: one refresh may
# be late (a busy event loop, a slow Redis) without its messages being restored.
HEARTBEATS_PER_VISIBILITY_TIMEOUT = 4
# Kombu's own default, when the transport options do not set one.
DEFAULT_VISIBILITY_TIMEOUT = kombu_redis.Channel.visibility_timeout


def heartbeat_interval(transport_options: dict[str, Any]) -> float:
    """Seconds between two refreshes of a worker's unacked messages."""
    visibility = float(transport_options.get("visibility_timeout") or DEFAULT_VISIBILITY_TIMEOUT)
    return max(1.0, visibility / HEARTBEATS_PER_VISIBILITY_TIMEOUT)


def refresh_unacked(channels: Any) -> int:
    """Move the unacked-index entries of every message `channels` hold to now; returns how many."""
    refreshed = 0
    for channel in list(channels):
        tags = list(channel.qos._delivered)
        if not tags:
            continue
        now = time.time()
        with channel.conn_or_acquire() as client:
            refreshed += int(
                client.zadd(channel.unacked_index_key, dict.fromkeys(tags, now), xx=True, ch=True)
            )
    return refreshed


class Transport(kombu_redis.Transport):
    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle: Any = self.cycle  # Kombu's MultiChannelPoller (typed as the virtual transport's)
        old = getattr(cycle, "_heartbeat_tref", None)
        if old is not None:
            old.cancel()  # a reconnect registers again: one heartbeat per connection
        interval = heartbeat_interval(connection.client.transport_options)
        cycle._heartbeat_tref = loop.call_repeatedly(interval, self._heartbeat)

    def _heartbeat(self) -> None:
        try:
            cycle: Any = self.cycle
            refresh_unacked(cycle._channels)
        except self.connection_errors as exc:
            # The next beat tries again; a worker cut off from Redis for longer than the
            # visibility timeout has its messages restored, as a dead worker would.
            logger.warning("could not refresh the unacked messages' heartbeat: %s", exc)


def install() -> None:
    """Use `Transport` for `redis://` and `rediss://` broker URLs in this process."""
    for scheme in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        kombu.transport._transport_cache.pop(scheme, None)
