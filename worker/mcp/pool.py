"""Pooled MCP sessions, one per (transport, target, credentials), living on the process loop.

Each session is opened and closed by its own owner task: the SDK's anyio task groups and cancel
scopes must be exited by the task that entered them. Callers run in other tasks on the same loop
and send requests on its `ClientSession` directly; that is safe because the SDK's JSON-RPC dispatcher
correlates concurrent requests through per-request memory streams, and the transport's own
tasks (pipe readers, HTTP POSTs) live in the owner's task group, not the caller's.

A session closes after `session_idle_ttl` without calls. One that died (closed stream, child
exited, connection reset) is dropped, and a call on a session that was already open when the
call began is retried once on a fresh session; a failure on a fresh session is raised at once.
Calls per session key are capped by `max_concurrency_per_service`; stdio sessions (one child
process each) by `max_stdio_sessions` per process, the least recently used idle one closed first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import anyio
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from worker.errors import ProtocolError, ServerTimeout, ServerUnavailable, WorkerError
from worker.mcp.http_sessions import ServerSession
from worker.mcp.outcome import classify, session_is_dead
from worker.mcp.transports import Probe, open_client, resumed_session, target_of
from worker.services.config import ServiceConfig, Timeouts, timeouts_for
from worker.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
# (transport, target, credentials, connect timeout, call timeout, resumed server session id or "")
Key = tuple[str, str, str, float, float, str]
Op = Callable[[ClientSession, float], Awaitable[T]]

# How long a dying session gets to close and record why it died, before its error is classified.
DEATH_REPORT_WAIT = 3.0
# Closing one session: the SDK's stdio shutdown (close stdin, SIGTERM, SIGKILL) takes up to ~6.5 s.
SESSION_CLOSE_TIMEOUT = 10.0
# After cancelling an owner that would not close, the time left for its shielded cleanup.
SESSION_ABORT_TIMEOUT = 3.0
# Shortest idle re-check while calls are in flight past the TTL.
IDLE_RECHECK = 1.0


def describe(config: ServiceConfig) -> str:
    """How messages name a service's server: never a credential, nor a URL's userinfo or query."""
    if config.mode == "stdio":
        command = (config.url or "").split()
        where = os.path.basename(command[0]) if command else "default command"
    else:
        parts = urlsplit(config.url or "")
        where = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return f"MCP server for {config.desc!r} ({config.mode} {where})"


class Session:
    """One MCP session and the task that owns it."""

    def __init__(
        self,
        key: Key,
        config: ServiceConfig,
        settings: Settings,
        on_spawn: Callable[[], None] | None = None,
        resume: ServerSession | None = None,
    ) -> None:
        self.key = key
        self.where = describe(config)
        self.secrets = config.secrets()
        self.probe = Probe(label=config.desc, on_spawn=on_spawn)
        self.idle_ttl = settings.session_idle_ttl
        self.client: ClientSession | None = None
        self.failure: BaseException | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.closing = anyio.Event()
        self.scope = anyio.CancelScope()
        self.in_flight = 0
        self.last_used = time.monotonic()
        self._factory = (
            (lambda: resumed_session(config, settings, self.probe, resume))
            if resume is not None
            else (lambda: open_client(config, settings, self.probe))
        )
        # A fresh context: the owner outlives the task that opened it, so it must not log with
        # that task's id and user.
        self.task = asyncio.get_running_loop().create_task(
            self._own(), name=f"mcp-session {config.desc}", context=contextvars.Context()
        )

    @property
    def usable(self) -> bool:
        return not self.task.done() and not self.closing.is_set()

    async def _own(self) -> None:
        try:
            with self.scope:
                async with self._factory() as client:
                    self.client = client
                    self.ready.set_result(None)
                    await self._wait_until_idle()
        except Exception as exc:
            self.failure = exc
            if self.ready.done():
                logger.info(
                    "%s: session ended: %s", self.where, classify(exc, self.where, self.probe, self.secrets)
                )
        finally:
            self.client = None
            if not self.ready.done():
                self.ready.set_result(None)

    async def _wait_until_idle(self) -> None:
        while not self.closing.is_set():
            remaining = self.idle_ttl - (time.monotonic() - self.last_used)
            if remaining <= 0 and self.in_flight == 0:
                logger.debug("%s: closing idle session", self.where)
                self.closing.set()  # no caller may pick it up while it closes
                return
            with anyio.move_on_after(max(remaining, IDLE_RECHECK)):
                await self.closing.wait()

    def lease(self) -> None:
        """Count a caller in, from before it waits for the handshake, so idling cannot close it."""
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self.last_used = time.monotonic()

    async def call(self, op: Op[T], timeout: float) -> T:
        client = self.client
        if client is None:
            raise self._closed_error()
        return await op(client, timeout)

    @staticmethod
    def _closed_error() -> MCPError:
        return MCPError(code=CONNECTION_CLOSED, message="Connection closed")

    async def close(self, timeout: float = SESSION_CLOSE_TIMEOUT) -> None:
        """Ask the owner to close the session and wait for it (cancelling it past `timeout`)."""
        self.closing.set()
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        if not done:
            logger.warning("%s: session did not close within %.0fs; cancelling it", self.where, timeout)
            self.scope.cancel()
            await asyncio.wait({self.task}, timeout=SESSION_ABORT_TIMEOUT)


class Pool:
    """The sessions of one process loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sessions: dict[Key, Session] = {}
        self.limits: dict[Key, asyncio.Semaphore] = {}
        self.opened = 0
        self.spawned = 0
        self.retries = 0
        self._background: set[asyncio.Task[None]] = set()
        self.closed = False

    def stats(self) -> dict[str, int]:
        live = [s for s in self.sessions.values() if s.client is not None]
        return {
            "open_sessions": len(live),
            "open_stdio_sessions": sum(1 for s in live if s.key[0] == "stdio"),
            "sessions_opened": self.opened,
            "stdio_spawned": self.spawned,
            "in_flight": sum(s.in_flight for s in self.sessions.values()),
            "retries": self.retries,
        }

    def _count_spawn(self) -> None:
        self.spawned += 1

    def _drop(self, session: Session) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    async def _session(
        self,
        key: Key,
        config: ServiceConfig,
        settings: Settings,
        timeouts: Timeouts,
        deadline: float,
        resume: ServerSession | None,
    ) -> tuple[Session, bool]:
        """A leased session for `key` and whether it was opened (or being opened) for this call."""
        session = self.sessions.get(key)
        if session is not None and session.usable and session.ready.done() and session.client is not None:
            session.lease()
            return session, False
        if session is None or not session.usable:
            if self.closed:
                raise ServerUnavailable("the MCP runtime is shutting down; retry the call")
            if session is not None:
                self._drop(session)
            if key[0] == "stdio":
                self._make_room_for_stdio(settings.max_stdio_sessions)
            session = Session(key, config, settings, on_spawn=self._count_spawn, resume=resume)
            self.sessions[key] = session
            self.opened += 1
        session.lease()
        wait = max(0.0, min(timeouts.connect, deadline - self.loop.time()))
        try:
            await asyncio.wait_for(asyncio.shield(session.ready), wait)
        except BaseException as exc:
            session.release()
            if isinstance(exc, TimeoutError):
                raise self._handshake_timeout(session) from None
            raise
        if session.client is None:
            session.release()
            self._drop(session)
            raise classify(
                session.failure or session._closed_error(), session.where, session.probe, session.secrets
            )
        return session, True

    def _make_room_for_stdio(self, cap: int) -> None:
        """Below `cap` stdio sessions (children) in this process: close the least recently used
        idle ones. Sessions with calls in flight are never closed, so a process whose every stdio
        session is busy goes over the cap until one idles."""
        stdio = [s for s in self.sessions.values() if s.key[0] == "stdio"]
        idle = sorted((s for s in stdio if s.in_flight == 0 and s.usable), key=lambda s: s.last_used)
        for session in idle[: max(0, len(stdio) - cap + 1)]:
            logger.info(
                "%s: closing the least recently used stdio session (MCP_MAX_STDIO_SESSIONS=%d)",
                session.where,
                cap,
            )
            self._close_in_background(session)

    def _close_in_background(self, session: Session) -> None:
        self._drop(session)
        task = self.loop.create_task(session.close(0 if not session.ready.done() else SESSION_CLOSE_TIMEOUT))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _handshake_timeout(self, session: Session) -> WorkerError:
        """Give up on a session whose handshake took too long: close it in the background."""
        self._close_in_background(session)
        if session.probe.stream_error:
            return ProtocolError(
                f"{session.where} wrote output that is not JSON-RPC; is the command an MCP server?"
            )
        return ServerTimeout(
            f"{session.where} did not finish the MCP handshake in time; raise connect_timeout"
        )

    async def run(
        self, config: ServiceConfig, settings: Settings, op: Op[T], resume: ServerSession | None = None
    ) -> T:
        """Run `op(session, call_timeout)` on the service's pooled session, within connect + call
        time; with `resume`, on that streamable HTTP session at the server (pooled too, by its id).

        Raises:
            WorkerError: the classified failure (see `worker.mcp.outcome.classify`).
        """
        timeouts = timeouts_for(config, settings)
        key: Key = (
            config.mode,
            target_of(config, settings),
            config.credential_hash(),
            timeouts.connect,
            timeouts.call,
            resume.id if resume is not None else "",
        )
        deadline = self.loop.time() + timeouts.connect + timeouts.call
        limit = self.limits.get(key)
        if limit is None:
            limit = self.limits[key] = asyncio.Semaphore(settings.max_concurrency_per_service)
        if not limit.locked():
            await limit.acquire()  # a free slot is taken at once: no task or timer for wait_for
        else:
            try:
                await asyncio.wait_for(limit.acquire(), max(0.0, deadline - self.loop.time()))
            except TimeoutError:
                raise ServerTimeout(
                    f"{describe(config)}: {settings.max_concurrency_per_service} calls already running; "
                    "raise MCP_MAX_CONCURRENCY_PER_SERVICE or the timeouts"
                ) from None
        try:
            for attempt in (1, 2):
                session, fresh = await self._session(key, config, settings, timeouts, deadline, resume)
                budget = max(0.001, min(timeouts.call, deadline - self.loop.time()))
                try:
                    return await session.call(op, budget)
                except Exception as failure:
                    exc = failure
                finally:
                    session.release()
                if not session_is_dead(exc):
                    raise classify(exc, session.where, session.probe, session.secrets) from None
                self._drop(session)
                await session.close(DEATH_REPORT_WAIT)
                cause = BaseExceptionGroup("session died", [exc, *filter(None, [session.failure])])
                error = classify(cause, session.where, session.probe, session.secrets)
                retryable = isinstance(error, ServerUnavailable)
                if fresh or not retryable or attempt == 2 or deadline <= self.loop.time():
                    raise error from None
                self.retries += 1
                logger.info("%s: session died (%s); retrying once on a fresh session", session.where, error)
            raise AssertionError("unreachable")
        finally:
            limit.release()

    async def close_all(self) -> None:
        """Close every session (reaping stdio children), concurrently; open no new ones after."""
        self.closed = True
        sessions = list(self.sessions.values())
        self.sessions.clear()
        if self._background:
            await asyncio.wait(set(self._background), timeout=SESSION_CLOSE_TIMEOUT)
        if sessions:
            await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


_pool: Pool | None = None


def get_pool() -> Pool:
    """The running loop's pool (a new one after a fork, when the loop is new). Loop thread only."""
    global _pool
    if _pool is None or _pool.loop is not asyncio.get_running_loop():
        _pool = Pool()
    return _pool


def current_pool() -> Pool | None:
    """The pool if one exists on the running loop, without creating it."""
    return _pool if _pool is not None and _pool.loop is asyncio.get_running_loop() else None
