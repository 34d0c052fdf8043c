"""Small helpers for processes this project starts on loopback (the demo, the bench, the tests):
a free port, whether something listens on one, and polling until a condition holds."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """True when something accepts connections on the loopback `port`."""
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises:
        TimeoutError: still falsy after `timeout` seconds (the message names `what`).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
