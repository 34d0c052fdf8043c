"""Real processes for the tests: Celery workers and demo MCP servers on loopback.

Every wait is bounded; every process is stopped (and reaped) by its fixture.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

from worker.processes import Child, free_port, spawn, start_listening, wait_until

START_TIMEOUT_S = 60.0


# One implementation of spawning and stopping, shared with the demo and the bench.
Proc = Child


def start_demo_server(
    transport: str,
    log_dir: Path,
    *,
    token: str | None = None,
    test_tools: bool = True,
    env: Mapping[str, str] | None = None,
) -> tuple[Proc, str]:
    """Start the bundled demo server over HTTP (`sse` or `streamable-http`); returns it and its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "worker.demo.server", "--transport", transport, "--port", str(port)]
    if token:
        argv += ["--token", token]
    if test_tools:
        argv.append("--test-tools")
    proc = start_listening(
        f"demo-{transport}-{port}", argv, port, env or os.environ, log_dir, START_TIMEOUT_S
    )
    path = "/sse" if transport == "sse" else "/mcp"
    return proc, f"http://127.0.0.1:{port}{path}"


@contextmanager
def broker_env(url: str) -> Iterator[None]:
    """CELERY_BROKER_URL (and the result backend) set to `url` in this process for the block.

    Celery reads these variables before any app's configuration, even an explicit `broker=`, so a
    test that talks to a worker on another broker must set them while its app connects.
    """
    saved = {k: os.environ.get(k) for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    os.environ["CELERY_BROKER_URL"] = os.environ["CELERY_RESULT_BACKEND"] = url
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ping(broker: str, *hostnames: str, timeout: float = 0.5) -> bool:
    """True when every worker of `hostnames` on `broker` answers a ping."""
    from celery import Celery

    with broker_env(broker):
        app = Celery("ping")
        try:
            replies = app.control.ping(destination=list(hostnames), timeout=timeout)
        finally:
            app.close()
    return {name for reply in replies or [] for name in reply} >= set(hostnames)


def start_worker(
    name: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    queues: str = "mcp.tools,mcp.reports,mcp.schedule",
    concurrency: int = 2,
    pool: str = "prefork",
    extra: list[str] | None = None,
    loglevel: str = "INFO",
) -> Proc:
    """Start `celery -A worker worker` and wait until it answers a ping over its own broker."""
    from worker.celery import app

    broker = (env or {}).get("CELERY_BROKER_URL") or app.conf.broker_url

    hostname = f"{name}@{socket.gethostname()}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "-n",
        hostname,
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        *(extra or []),
    ]
    return _answering(name, argv, env, log_dir, broker, [hostname])


def start_tools_worker(
    name: str, log_dir: Path, env: Mapping[str, str] | None = None, *, extra: list[str] | None = None
) -> Proc:
    """The production tools worker, `mcp-worker worker -Q mcp.tools` with no pool options (the
    threads pool, one process per core); waits until each of its processes answers a ping. Its
    name is the first process's node name."""
    from worker.celery import app
    from worker.cli.supervise import node_names, process_count
    from worker.settings import Settings

    environ = env or os.environ
    broker = environ.get("CELERY_BROKER_URL") or app.conf.broker_url
    hostname = f"{name}@{socket.gethostname()}"
    count = process_count(Settings.from_env(environ))
    nodes = node_names(hostname, count) if count > 1 else [hostname]
    argv = [str(Path(sys.executable).parent / "mcp-worker"), "worker", "-Q", "mcp.tools", "-n", hostname]
    argv += ["--without-gossip", "--without-mingle", *(extra or [])]
    return _answering(name, argv, env, log_dir, broker, nodes)


def _answering(
    name: str, argv: list[str], env: Mapping[str, str] | None, log_dir: Path, broker: str, nodes: list[str]
) -> Proc:
    proc = spawn(name, argv, env or os.environ, log_dir)

    def answered() -> bool:
        if not proc.alive():
            raise AssertionError(f"worker {name} exited early:\n{proc.log()[-4000:]}")
        return ping(broker, *nodes)

    try:
        wait_until(answered, START_TIMEOUT_S, f"worker {', '.join(nodes)} to answer a ping", interval=0.2)
    except BaseException:  # a timeout, a dead process or ^C: leave nothing running
        proc.kill_group()
        raise
    proc.name = nodes[0]
    return proc


@dataclass
class SessionWorkers:
    """The session's workers as production runs them: the tools worker (threads, one process per
    core) on `mcp.tools`, a prefork worker on the reports and schedule queues. `name` is the
    prefork one's node; `log()` is both logs."""

    tools: Proc
    reports: Proc

    @property
    def name(self) -> str:
        return self.reports.name

    @property
    def names(self) -> list[str]:
        return [self.tools.name, self.reports.name]

    def log(self) -> str:
        return self.tools.log() + self.reports.log()

    def stop(self) -> None:
        self.tools.stop()
        self.reports.stop()


def start_flower(log_dir: Path, env: Mapping[str, str], auth: str) -> tuple[Proc, str]:
    """Flower on a free loopback port with basic auth `user:password`; returns it and its base URL."""
    import httpx2

    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1"]
    proc = spawn(f"flower-{port}", argv, {**env, "FLOWER_BASIC_AUTH": auth}, log_dir)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"flower exited early:\n{proc.log()[-4000:]}")
        try:
            return httpx2.get(f"{base}/healthcheck", timeout=1.0).status_code == 200
        except httpx2.TransportError:
            return False

    try:
        wait_until(ready, START_TIMEOUT_S, f"flower on port {port}", interval=0.2)
    except BaseException:  # a timeout, a dead process or ^C: leave nothing running
        proc.kill_group()
        raise
    return proc, base


# ---------------------------------------------------------------- shared test pieces

EVERYTHING = (
    Path(__file__).resolve().parents[1]
    / ".cache"
    / "node"
    / "node_modules"
    / ".bin"
    / "mcp-server-everything"
)
INSTALL_HINT = "run scripts/install-test-servers.sh (needs node >= 18 and npm)"


def everything_binary() -> Path:
    """server-everything's executable; fails (never skips) when it is not installed."""
    import shutil

    import pytest

    if shutil.which("node") is None:
        pytest.fail(f"node is not installed; {INSTALL_HINT}")
    if not EVERYTHING.exists():
        pytest.fail(f"{EVERYTHING} is missing; {INSTALL_HINT}")
    return EVERYTHING


def producer_app(broker_url: str, name: str = "producer") -> Celery:
    """A producer that knows nothing but the broker (as an app would). CELERY_BROKER_URL in this
    process's environment (the session broker) beats `broker=`; the read/write URLs do not."""
    import uuid

    from celery import Celery

    app = Celery(f"{name}-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(
        broker_read_url=broker_url,
        broker_write_url=broker_url,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
    )
    return app
