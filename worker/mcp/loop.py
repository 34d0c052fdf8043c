"""One asyncio event loop per process, in a daemon thread, for the synchronous Celery tasks.

The loop is created on first use and again in a forked child (it is keyed on `os.getpid()`):
a loop or thread inherited across `fork` is dead in the child. Nothing here runs at import time.
Synchronous code hands coroutines to the loop with `run_sync`; pooled MCP sessions live on it
between calls, which is what makes a warm call cost milliseconds instead of a process start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from worker.errors import CallCancelled, ServerTimeout, ServerUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long `stop_loop` waits for the loop thread to finish after asking it to stop.
LOOP_JOIN_TIMEOUT = 5.0
# How long a cancelled call may take to unwind on the loop (the SDK writes the server its
# `notifications/cancelled` on the way out, bounded by its own 2 s write timeout).
CANCEL_UNWIND_TIMEOUT = 3.0


class _ProcessLoop:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=f"mcp-loop-{self.pid}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()


_lock = threading.Lock()
_current: _ProcessLoop | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """This process's runtime loop, started on first use (and again after a fork)."""
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid() or not _current.thread.is_alive():
            # An inherited loop belongs to a thread that does not exist in this process: drop it
            # without touching it (closing it would act on the parent's copies of its fds).
            _current = _ProcessLoop()
            logger.debug("started MCP runtime loop in pid %d", _current.pid)
        return _current.loop


def loop_is_running() -> bool:
    """True when this process has a live runtime loop (no loop is created to find out)."""
    current = _current
    return current is not None and current.pid == os.getpid() and current.thread.is_alive()


def in_loop_thread() -> bool:
    """True when called from the runtime loop's own thread (where `run_sync` would deadlock)."""
    current = _current
    return current is not None and current.thread is threading.current_thread()


async def _signalled(coro: Coroutine[Any, Any, T], done: threading.Event) -> T:
    try:
        return await coro
    finally:
        done.set()


def run_sync(
    coro: Coroutine[Any, Any, T],
    timeout: float,
    *,
    tick: Callable[[], bool] | None = None,
    tick_every: float = 0.5,
) -> T:
    """Run `coro` on the process loop and wait for it, at most `timeout` seconds.

    On timeout the coroutine is cancelled on the loop, so nothing keeps running behind the caller.
    With `tick`, the waiting thread calls it every `tick_every` seconds while the coroutine runs
    (the caller's own work: flushing progress, looking for a cancellation); when it returns True
    the coroutine is cancelled on the loop, and waited for while it unwinds.

    Raises:
        ServerTimeout: the coroutine did not finish within `timeout`.
        ServerUnavailable: the runtime was shut down while the coroutine ran.
        CallCancelled: `tick` asked for the call to stop.
        RuntimeError: called from the loop thread itself.
        Exception: whatever the coroutine raised.
    """
    if in_loop_thread():
        coro.close()
        raise RuntimeError("run_sync called from the MCP runtime loop thread; await the coroutine instead")
    done = threading.Event()
    future = asyncio.run_coroutine_threadsafe(_signalled(coro, done), get_loop())
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                return future.result(max(0.0, min(left, tick_every)) if tick is not None else timeout)
            except concurrent.futures.TimeoutError:
                if tick is None or left <= tick_every:
                    raise
            if tick():
                future.cancel()
                if not done.wait(CANCEL_UNWIND_TIMEOUT):
                    logger.warning("a cancelled MCP call did not unwind within %.0fs", CANCEL_UNWIND_TIMEOUT)
                raise CallCancelled("the call was cancelled while it ran; the server was told to stop")
    except concurrent.futures.CancelledError:
        raise ServerUnavailable("the MCP runtime shut down during the call; retry it") from None
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise ServerTimeout(
            f"the MCP call did not finish within {timeout:.0f}s; raise MCP_CALL_TIMEOUT"
        ) from None
    except BaseException:
        # `tick` failed, or the thread was interrupted: nothing keeps running behind the caller.
        future.cancel()
        raise


def stop_loop() -> None:
    """Stop and forget this process's loop (a no-op when there is none). Pending tasks are dropped."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is None or current.pid != os.getpid() or not current.thread.is_alive():
        return
    current.loop.call_soon_threadsafe(current.loop.stop)
    if current.thread is not threading.current_thread():
        current.thread.join(LOOP_JOIN_TIMEOUT)
