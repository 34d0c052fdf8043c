"""worker.broker, against a real Redis: a message taken by a worker is in `unacked` before the
worker has read it, so a worker that dies at that instant loses nothing; messages still flow in
order, wait when the queue is empty, and keep their priorities; and a Redis that refuses the
script or BLMOVE gets Kombu's own take."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads
from testenv import extra_redis_url

from worker import broker


@pytest.fixture(scope="module")
def url() -> str:
    # A database of its own: the sweep below restores every expired message in it.
    return extra_redis_url()


@pytest.fixture
def client(url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(url) as connection:
        connection.flushdb()
        yield connection


@pytest.fixture
def queue() -> Queue:
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _publish(url: str, queue: Queue, body: Any, **options: Any) -> None:
    # The producer side is Kombu's stock transport, as for an app that does not load ours.
    with Connection(url, transport=kombu_redis.Transport) as connection:
        Producer(connection).publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            serializer="json",
            **options,
        )


def _taken_and_dropped(url: str, queue: Queue, transport: type) -> None:
    """A consumer on `transport` asks Redis for a message and dies before reading the answer."""
    with Connection(url, transport=transport) as connection:
        channel = connection.default_channel
        channel.basic_consume(queue.name, False, lambda message: None, "dying-consumer")
        # As the poller does before it sends the take: a dedicated connection for it.
        channel.client.connection = channel.client.connection_pool.get_connection()
        channel._brpop_start()
        deadline = time.monotonic() + 5
        while channel.client.llen(queue.name) and time.monotonic() < deadline:
            time.sleep(0.01)
        channel.client.connection.disconnect()


def test_a_message_taken_by_a_worker_that_dies_before_reading_it_is_unacked_and_restored(
    url: str, client: redis.Redis, queue: Queue
) -> None:
    _publish(url, queue, {"n": 1})
    sent = loads(client.lindex(queue.name, 0))
    _taken_and_dropped(url, queue, broker.Transport)

    assert client.llen(queue.name) == 0
    [(tag, entry)] = client.hgetall("unacked").items()
    message, exchange, routing_key = loads(entry)
    assert message == sent and message["properties"]["delivery_tag"] == tag.decode()
    assert (exchange, routing_key) == (queue.exchange.name, queue.routing_key)
    assert client.zscore("unacked_index", tag) == pytest.approx(time.time(), abs=5)

    # The sweep of a live worker (visibility timeout passed) puts it back on its queue.
    with Connection(url, transport=broker.Transport, transport_options={"visibility_timeout": 0}) as sweeper:
        sweeper.default_channel.qos.restore_visible(num=None, interval=1)
    assert client.hlen("unacked") == 0
    [restored] = [loads(item) for item in client.lrange(queue.name, 0, -1)]
    assert restored["body"] == sent["body"]
    assert restored["properties"]["delivery_tag"] == tag.decode()
    assert restored["properties"]["delivery_info"]["redelivered"] is True


def test_kombus_own_take_loses_that_message(url: str, client: redis.Redis, queue: Queue) -> None:
    # Why worker.broker exists (kombu#305): with the stock BRPOP the same death leaves the message
    # nowhere. When Kombu fixes this, this test fails and worker.broker can go.
    _publish(url, queue, {"n": 1})
    _taken_and_dropped(url, queue, kombu_redis.Transport)
    assert client.llen(queue.name) == 0
    assert client.hlen("unacked") == 0


def _consume(url: str, queue: Queue, count: int, timeout: float = 10.0) -> list[Any]:
    got: list[Any] = []
    with Connection(url, transport=broker.Transport) as connection:

        def on_message(body: Any, message: Any) -> None:
            got.append(body)
            message.ack()

        with Consumer(connection, [queue], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + timeout
            while len(got) < count and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=1)
    return got


def test_messages_come_in_order_and_their_acks_clear_unacked(
    url: str, client: redis.Redis, queue: Queue
) -> None:
    for n in range(5):
        _publish(url, queue, {"n": n})
    assert _consume(url, queue, 5) == [{"n": n} for n in range(5)]
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0


def test_an_idle_consumer_wakes_for_a_message_sent_later(url: str, queue: Queue) -> None:
    sender = threading.Timer(1.5, _publish, (url, queue, {"late": True}))
    sender.start()
    try:
        started = time.monotonic()
        assert _consume(url, queue, 1) == [{"late": True}]
        # It waited for the message rather than giving up on an empty queue.
        assert time.monotonic() - started >= 1.4
    finally:
        sender.join()


def test_a_message_with_a_priority_is_taken_from_its_own_key(
    url: str, client: redis.Redis, queue: Queue
) -> None:
    _publish(url, queue, {"urgent": True}, priority=9)
    assert client.llen(queue.name) == 0  # it sits on the queue's priority key, not the queue's own
    assert _consume(url, queue, 1) == [{"urgent": True}]


def test_a_redis_that_refuses_the_script_and_blmove_falls_back_to_kombus_take(
    url: str, client: redis.Redis, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    # What an ACL without EVAL and BLMOVE (or a Redis older than 6.2) looks like to the worker.
    user = f"mcp-worker-test-{uuid.uuid4().hex[:8]}"
    client.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-eval", "-blmove"]
    )
    try:
        limited = url.replace("redis://", f"redis://{user}:unused@", 1)
        for n in range(3):
            _publish(url, queue, {"n": n})
        assert _consume(limited, queue, 3) == [{"n": n} for n in range(3)]
    finally:
        client.acl_deluser(user)
    assert "falling back to Kombu's take" in caplog.text
    assert client.hlen("unacked") == 0


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (redis.exceptions.ResponseError("ERR unknown command 'BLMOVE', with args beginning with: "), True),
        (redis.exceptions.NoPermissionError("User x has no permissions to run the 'eval' command"), True),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), False),
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), False),
    ],
)
def test_only_a_missing_or_forbidden_command_switches_to_kombus_take(
    error: redis.exceptions.ResponseError, refused: bool
) -> None:
    # A failover replica or a full Redis is a passing state: it must not cost the atomic take for
    # the rest of the worker's life.
    assert broker._refused(error) is refused


@contextlib.contextmanager
def _held(url: str, queue: Queue, count: int) -> Iterator[tuple[Connection, list[Any]]]:
    """A consumer that has taken `count` messages and acks none of them (yet)."""
    held: list[Any] = []
    with (
        Connection(url, transport=broker.Transport) as connection,
        Consumer(
            connection, [queue], callbacks=[lambda body, message: held.append(message)], accept=["json"]
        ),
    ):
        deadline = time.monotonic() + 10
        while len(held) < count and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=1)
        yield connection, held


def test_a_live_worker_keeps_its_unacked_messages_fresh(url: str, client: redis.Redis, queue: Queue) -> None:
    for n in range(3):
        _publish(url, queue, {"n": n})
    with _held(url, queue, 3) as (connection, held):
        assert len(held) == 3
        # As if the messages had been taken long ago: a sweep now would restore all three.
        old = time.time() - 3600
        client.zadd("unacked_index", {m.delivery_tag: old for m in held})
        held[0].ack()

        assert broker.refresh_unacked([connection.default_channel]) == 2
        scores = {m.delivery_tag: client.zscore("unacked_index", m.delivery_tag) for m in held}
        # The acked message stays gone; the two held ones are fresh.
        assert scores[held[0].delivery_tag] is None
        assert all(scores[m.delivery_tag] == pytest.approx(time.time(), abs=5) for m in held[1:])
        with Connection(
            url, transport=broker.Transport, transport_options={"visibility_timeout": 60}
        ) as sweeper:
            sweeper.default_channel.qos.restore_visible(num=None, interval=1)
        assert client.llen(queue.name) == 0 and client.hlen("unacked") == 2


def test_the_heartbeat_comes_several_times_per_visibility_timeout() -> None:
    assert broker.heartbeat_interval({"visibility_timeout": 60}) == 15
    assert broker.heartbeat_interval({"visibility_timeout": 2}) == 1  # never busier than once a second
    assert broker.heartbeat_interval({}) == broker.DEFAULT_VISIBILITY_TIMEOUT / 4
