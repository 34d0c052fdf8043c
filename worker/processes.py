"""Processes this project starts on loopback (the demo, the bench, the tests): one way to spawn
a child in its own process group, wait for it, look inside it, and stop it with everything it
started.

Inspection goes through psutil rather than /proc, so it reads the same on every platform psutil
supports. Every wait is bounded and raises `TimeoutError` naming what it waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

HOST = "127.0.0.1"
# A stopped child that has not exited by then has its whole group killed.
STOP_TIMEOUT_S = 30.0
# Reaping a SIGKILLed process takes no longer than this.
REAP_TIMEOUT_S = 10.0


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


@dataclass
class Child:
    """A child process in its own process group, its combined output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send `sig` (SIGTERM: a warm shutdown for Celery) and wait for the exit; then SIGKILL
        whatever the group still holds (pool children, stdio servers) and reap. Returns the exit
        code."""
        try:
            if self.alive():
                self.popen.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=timeout)
            self.kill_group()
        finally:
            self._log.close()
        return int(self.popen.returncode)

    def kill_group(self) -> None:
        """SIGKILL the child's whole process group and reap the child."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(timeout=REAP_TIMEOUT_S)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
        """`wait_until(predicate)`, failing at once, with the log's tail, if the child exits.

        Raises:
            TimeoutError: the wait ran out (the child is left running).
            RuntimeError: the child exited first.
        """

        def ready() -> Any:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited while waiting for {what}:\n{self.tail(2000)}")
            return predicate()

        return wait_until(ready, timeout, what, interval)


def set_parent_death_signal() -> None:
    # Linux: the child is SIGKILLed when its parent dies, so a killed test run or demo leaves no
    # worker behind to take the next run's tasks.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def spawn(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    log_dir: Path,
    *,
    cwd: Path | None = None,
    die_with_parent: bool = True,
    fresh_log: bool = False,
) -> Child:
    """Start `argv` in its own session (so a stop takes its whole group), output in
    `log_dir/name.log` (appended to, or replaced with `fresh_log`)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb" if fresh_log else "ab")
    popen = subprocess.Popen(
        argv,
        env=dict(env),
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=set_parent_death_signal if die_with_parent and sys.platform == "linux" else None,
    )
    return Child(name=name, popen=popen, log_path=log_path, _log=log)


def start_listening(
    name: str, argv: list[str], port: int, env: Mapping[str, str], log_dir: Path, timeout: float
) -> Child:
    """`spawn` a server and wait until it accepts connections on `port`.

    Raises:
        TimeoutError, RuntimeError: as `Child.wait_for`; the server is stopped first.
    """
    child = spawn(name, argv, env, log_dir)
    try:
        child.wait_for(lambda: port_open(port), timeout, f"{name} on port {port}")
    except BaseException:  # a timeout, a dead process or ^C: leave nothing running
        child.kill_group()
        raise
    return child


# ---------------------------------------------------------------- looking inside processes


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def children(pid: int, *, recursive: bool = False) -> list[int]:
    """The live children of `pid` (all descendants with `recursive`); zombies left out."""
    process = _process(pid)
    if process is None:
        return []
    found = []
    for child in process.children(recursive=recursive):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
    return sorted(found)


def gone(pid: int) -> bool:
    """True when `pid` no longer exists (reaped); False while it runs or is a zombie."""
    return not psutil.pid_exists(pid)


def rss_bytes(pid: int, *, tree: bool = False) -> int:
    """Resident memory of `pid` (and of all its descendants with `tree`); 0 once it is gone."""
    pids = [pid, *children(pid, recursive=True)] if tree else [pid]
    total = 0
    for one in pids:
        process = _process(one)
        if process is not None:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
    return total


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own CPU, CPU of its reaped children) of `pid` in seconds; (0, 0) once it is gone."""
    process = _process(pid)
    if process is None:
        return 0.0, 0.0
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0, 0.0
    return times.user + times.system, times.children_user + times.children_system


def cmdline(pid: int) -> str:
    process = _process(pid)
    try:
        return " ".join(process.cmdline()) if process is not None else ""
    except psutil.Error:
        return ""


def socket_count(pid: int) -> int:
    """How many sockets `pid` holds open."""
    process = _process(pid)
    try:
        return len(process.net_connections(kind="all")) if process is not None else 0
    except psutil.Error:
        return 0


def matching(predicate: Callable[[psutil.Process], bool]) -> list[int]:
    """Pids of this machine's processes for which `predicate` holds (those it may not read are
    skipped)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and predicate(process):
                found.append(process.pid)
    return found
