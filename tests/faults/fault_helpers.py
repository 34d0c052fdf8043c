"""Real processes for the fault tests: private redis-servers and Postgres clusters, Celery workers
on them, MCP servers to break, and ways to read the rows they write.

Every process a test starts is registered with its `Procs` and killed (by process group, or by
its own stop command for Postgres) when the test ends, pass or fail. Each worker gets its own
redis-server, so nothing here competes with the session worker of the main suite. Every wait is
bounded; nothing asserts on wall time.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from processes import Proc, free_port, producer_app, spawn, wait_until
from sqlalchemy.orm import Session
from testenv import RUN_ID, TEST_DB_URL

from worker.db.models import McpExecution
from worker.execution import audit
from worker.processes import children, matching, port_open
from worker.services.store import save_service

PYTHON = sys.executable
FAKE_SERVERS = Path(__file__).with_name("fake_servers.py")
STDIO_DEMO = f"{shlex.quote(PYTHON)} -m worker.demo.server --transport stdio --test-tools"
GARBAGE_STDIO = f"{shlex.quote(PYTHON)} {shlex.quote(str(FAKE_SERVERS))} garbage-stdio"
# Every service the fault tests create names this endpoint; stdio children get it in their
# environment, which is how cleanup finds the ones a SIGKILLed worker left behind.
ENDPOINT_MARK = f"https://faults-{RUN_ID}.example"
FINAL = ("success", "error")


def _pg_bin() -> Path:
    """Where initdb and pg_ctl live: $PG_BIN, Debian's newest /usr/lib/postgresql/N/bin, or PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    debian = sorted(versions, key=lambda p: int(p.parent.name))
    if debian:
        return debian[-1]
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else Path("/usr/bin")


PG_BIN = _pg_bin()
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- process bookkeeping


class Procs:
    """What one test started; `cleanup()` kills all of it, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._finalizers: list[Callable[[], None]] = []

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Proc:
        proc = spawn(name, argv, env or os.environ, self.log_dir)
        self.on_cleanup(lambda: kill_proc(proc))
        return proc

    def on_cleanup(self, finalizer: Callable[[], None]) -> None:
        self._finalizers.append(finalizer)

    def cleanup(self) -> None:
        errors = []
        for finalizer in reversed(self._finalizers):
            try:
                finalizer()
            except Exception as exc:  # keep cleaning; report at the end
                errors.append(exc)
        self._finalizers.clear()
        kill_marked_children()
        if errors:
            raise errors[0]


def kill_proc(proc: Proc) -> None:
    """SIGKILL the process group of `proc` (it was started in its own session) and reap it."""
    if proc.alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.stop(signal.SIGKILL, timeout=STOP_TIMEOUT_S)


def kill_marked_children() -> None:
    """SIGKILL stdio MCP servers started for this run's services (found by ENDPOINT_MARK in their
    environment): the SDK starts each in its own session, so a killed worker's group misses them."""

    def is_marked(process: psutil.Process) -> bool:
        return process.environ().get("MCP_SERVICE_ENDPOINT") == ENDPOINT_MARK

    for pid in matching(is_marked):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- Redis


class RedisServer:
    """A private redis-server on a free port, with or without an append-only file."""

    def __init__(self, procs: Procs, workdir: Path, *, appendonly: bool = False) -> None:
        self.procs = procs
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.proc: Proc | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_connect_timeout=2, socket_timeout=5)

    def start(self) -> RedisServer:
        self.starts += 1
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        argv += ["--save", "", "--appendonly", "yes" if self.appendonly else "no", "--protected-mode", "no"]
        self.proc = self.procs.spawn(f"redis-{self.port}-{self.starts}", argv)

        def ready() -> bool:
            assert self.proc is not None and self.proc.alive(), f"redis-server exited:\n{self.proc.log()}"
            try:
                with self.client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(ready, START_TIMEOUT_S, f"redis-server on port {self.port}", interval=0.05)
        return self

    def describe(self) -> str:
        """Queue lengths and unacked messages (for failure messages)."""
        try:
            with self.client() as client:
                return f"redis {self.port}: mcp.tools {client.llen('mcp.tools')}, unacked {client.hlen('unacked')}"
        except redis.RedisError as exc:
            return f"redis {self.port}: {exc}"

    def stop(self) -> None:
        """A graceful shutdown (SIGTERM: Redis flushes its append-only file and exits)."""
        assert self.proc is not None
        self.proc.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S)


# ---------------------------------------------------------------- Postgres


def _as_postgres(argv: list[str], timeout: float = 60) -> None:
    """Run a Postgres binary as the `postgres` user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, timeout=timeout, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


class PgCluster:
    """A private Postgres cluster (initdb in a temporary folder, TCP on a free loopback port)."""

    def __init__(self, procs: Procs) -> None:
        self.port = free_port()
        # Not under pytest's tmp_path: its folders are private to root and postgres must enter this one.
        self.dir = Path(tempfile.mkdtemp(prefix=f"mcp-faults-pg-{self.port}-"))
        procs.on_cleanup(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        procs.on_cleanup(self.stop_immediately)
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        _as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        options = f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1"
        log = str(self.dir / "server.log")
        pg_ctl = str(PG_BIN / "pg_ctl")
        _as_postgres([pg_ctl, "-D", str(self.data), "-l", log, "-w", "-t", "60", "-o", options, *args])

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def stop_immediately(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError):
                self.stop("immediate")

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


# ---------------------------------------------------------------- workers


def worker_env(broker_url: str, database_url: str = TEST_DB_URL, **settings: object) -> dict[str, str]:
    """The test environment, pointed at `broker_url` and `database_url`, plus `settings`."""
    env = dict(os.environ)
    env.update(CELERY_BROKER_URL=broker_url, CELERY_RESULT_BACKEND=broker_url, DATABASE_URL=database_url)
    env.update({name: str(value) for name, value in settings.items()})
    return env


def celery_app(broker_url: str) -> Celery:
    """A producer that knows nothing but the broker (as an app would), its results there too."""
    app = producer_app(broker_url, "faults")
    app.backend_cls = broker_url
    return app


@dataclass
class Worker:
    proc: Proc
    hostname: str
    app: Celery

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def log(self) -> str:
        return self.proc.log()

    def tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def pool_pids(self) -> list[int]:
        return children(self.pid)

    def active(self) -> list[dict[str, Any]]:
        inspect = self.app.control.inspect(destination=[self.hostname], timeout=1.0, limit=1)
        replies = inspect.active() or {}
        return list(replies.get(self.hostname) or [])


def start_worker(
    procs: Procs,
    name: str,
    env: Mapping[str, str],
    *,
    pool: str = "prefork",
    concurrency: int = 2,
    queues: str = "mcp.tools",
) -> Worker:
    """Start `celery -A worker worker` on `env`'s broker and wait until it answers a ping."""
    hostname = f"{name}-{uuid.uuid4().hex[:6]}@faults"
    argv = [PYTHON, "-m", "celery", "-A", "worker", "worker", "-n", hostname, "-Q", queues]
    argv += ["-c", str(concurrency), "-P", pool, "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    return _started(procs, env, argv, [hostname])


def start_tools_worker(procs: Procs, name: str, env: Mapping[str, str], *extra: str) -> Worker:
    """The production tools worker: `mcp-worker worker -Q mcp.tools` with no pool options (its
    defaults are the feature), plus `extra`; it answers once each of the threads-pool processes it
    supervises (`name-1@faults`, ...) does. The returned worker's hostname is the first one's."""
    from worker.cli.supervise import node_names, process_count
    from worker.settings import Settings

    argv = [str(Path(PYTHON).parent / "mcp-worker"), "worker", "-Q", "mcp.tools"]
    count = process_count(Settings.from_env(env))
    hostname = f"{name}-{uuid.uuid4().hex[:6]}@faults"
    nodes = node_names(hostname, count) if count > 1 else [hostname]
    argv += ["--without-gossip", "--without-mingle", *extra, "-n", hostname]
    return _started(procs, env, argv, nodes)


# The tools workers the fault tests run the same faults on: prefork (the reports worker's pool,
# and the tools worker's before issue 14) and the production tools worker (threads, one process
# per core under a supervisor).
WORKER_KINDS = ("prefork", "production")


def start_kind(kind: str, procs: Procs, name: str, env: Mapping[str, str], *, concurrency: int = 2) -> Worker:
    """A tools worker of `kind` (WORKER_KINDS): prefork with `concurrency` processes, or production's."""
    if kind == "production":
        return start_tools_worker(procs, f"{name}-{kind}", env)
    return start_worker(procs, f"{name}-{kind}", env, concurrency=concurrency)


def signal_tree(worker: Worker, signum: int) -> None:
    """Send `signum` to the worker's process and every process under it (a supervisor's workers
    run in sessions of their own, so a process-group signal would miss them)."""
    from worker.processes import children

    for pid in [worker.pid, *children(worker.pid, recursive=True)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _started(procs: Procs, env: Mapping[str, str], argv: list[str], nodes: list[str]) -> Worker:
    proc = procs.spawn(nodes[0].split("@")[0], argv, env)
    app = celery_app(env["CELERY_BROKER_URL"])
    procs.on_cleanup(app.close)

    def answered() -> bool:
        assert proc.alive(), f"worker {nodes[0]} exited early:\n{proc.log()[-4000:]}"
        replies = app.control.ping(destination=nodes, timeout=0.5)
        return {n for reply in replies or [] for n in reply} >= set(nodes)

    wait_until(answered, START_TIMEOUT_S, f"worker {', '.join(nodes)} to answer a ping", interval=0.2)
    return Worker(proc, nodes[0], app)


# ---------------------------------------------------------------- MCP servers


@dataclass
class CountingServer:
    """The counting MCP server of fake_servers.py over streamable HTTP."""

    proc: Proc
    url: str
    calls_log: Path

    def starts(self) -> list[tuple[str, int]]:
        """(tag, calls in flight when it began) for every call that reached the tool."""
        if not self.calls_log.exists():
            return []
        lines = self.calls_log.read_text().splitlines()
        return [(p[1], int(p[2])) for p in (line.split() for line in lines) if p and p[0] == "start"]

    def calls(self) -> collections.Counter[str]:
        return collections.Counter(tag for tag, _ in self.starts())

    def ended(self) -> collections.Counter[str]:
        lines = self.calls_log.read_text().splitlines() if self.calls_log.exists() else []
        return collections.Counter(p[1] for p in (line.split() for line in lines) if p and p[0] == "end")

    def max_in_flight(self) -> int:
        return max((n for _, n in self.starts()), default=0)


def start_counting_server(procs: Procs) -> CountingServer:
    port = free_port()
    calls_log = procs.log_dir / f"calls-{port}.log"
    argv = [PYTHON, str(FAKE_SERVERS), "counting", "--port", str(port), "--log", str(calls_log)]
    proc = procs.spawn(f"counting-{port}", argv)
    wait_until(lambda: port_open(port) or not proc.alive(), START_TIMEOUT_S, f"counting server on {port}")
    assert proc.alive(), proc.log()
    return CountingServer(proc, f"http://127.0.0.1:{port}/mcp", calls_log)


def start_garbage_http(procs: Procs) -> str:
    port = free_port()
    proc = procs.spawn(
        f"garbage-http-{port}", [PYTHON, str(FAKE_SERVERS), "garbage-http", "--port", str(port)]
    )
    wait_until(lambda: port_open(port) or not proc.alive(), START_TIMEOUT_S, f"garbage server on {port}")
    assert proc.alive(), proc.log()
    return f"http://127.0.0.1:{port}/mcp"


def start_demo(procs: Procs, transport: str = "streamable-http") -> tuple[Proc, str]:
    """The bundled demo server with its test tools (sleep, crash, big_result), no token."""
    port = free_port()
    argv = [PYTHON, "-m", "worker.demo.server", "--transport", transport, "--port", str(port), "--test-tools"]
    proc = procs.spawn(f"demo-{transport}-{port}", argv)
    wait_until(lambda: port_open(port) or not proc.alive(), START_TIMEOUT_S, f"demo server on {port}")
    assert proc.alive(), proc.log()
    return proc, f"http://127.0.0.1:{port}/{'sse' if transport == 'sse' else 'mcp'}"


# ---------------------------------------------------------------- database


def add_service(engine: sa.Engine, user: str, desc: str, mode: str, url: str | None, **extra: Any) -> None:
    with Session(engine) as session, session.begin():
        save_service(
            session,
            {
                "user_id": user,
                "desc": desc,
                "interaction_mode": mode,
                "url": url,
                "api_key": "fault-test-key",
                "endpoint": ENDPOINT_MARK,
                **extra,
            },
        )


def rows(engine: sa.Engine, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The execution rows of `task_ids` (absent ids are missing from the result)."""
    ids = list(task_ids)
    found: dict[str, dict[str, Any]] = {}
    with Session(engine) as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for row in session.scalars(sa.select(McpExecution).where(McpExecution.task_id.in_(chunk))):
                found[row.task_id] = audit.as_dict(row)
    return found


def row_counts(engine: sa.Engine, task_ids: Iterable[str]) -> collections.Counter[str]:
    """How many rows each task id has (the unique constraint says at most one)."""
    ids = list(task_ids)
    counts: collections.Counter[str] = collections.Counter()
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = sa.select(McpExecution.task_id).where(McpExecution.task_id.in_(chunk))
            counts.update(conn.scalars(query))
    return counts


def by_status(found: Mapping[str, Mapping[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(str(r["status"]) for r in found.values())


def wait_final(
    engine: sa.Engine,
    task_ids: Iterable[str],
    timeout: float,
    explain: Callable[[], str] = lambda: "",
) -> dict[str, dict[str, Any]]:
    """Wait until every task has a final row; on timeout, fail with the statuses seen."""
    ids = list(task_ids)
    seen: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        seen.clear()
        seen.update(rows(engine, ids))
        return len(seen) == len(ids) and all(r["status"] in FINAL for r in seen.values())

    try:
        wait_until(done, timeout, f"{len(ids)} final rows", interval=0.25)
    except TimeoutError as exc:
        missing = [t for t in ids if t not in seen]
        raise AssertionError(
            f"{exc}: {dict(by_status(seen))}, {len(missing)} without a row {missing[:10]}\n{explain()}"
        ) from None
    return dict(seen)


_TASK_LINE = re.compile(r"\[mcp\.execute_tool (\S+) user=[^\]]*\] (.*)")


def tasks_logging(log: str, phrase: str) -> set[str]:
    """Ids of the tool-call tasks that logged a line containing `phrase`."""
    found = set()
    for line in log.splitlines():
        match = _TASK_LINE.search(line)
        if match and phrase in match.group(2):
            found.add(match.group(1))
    return found


@dataclass
class Sent:
    """Outcome of sending tasks while something breaks: ids whose send returned, and errors."""

    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- fixtures
# Shared by tests/faults and tests/progress: their conftests import them.


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Processes of this test; every one is SIGKILLed by process group when the test ends."""
    started = Procs(tmp_path / "logs")
    try:
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def redis_server(procs: Procs, tmp_path: Path) -> RedisServer:
    """A private redis-server (no persistence) for this test's worker and producer."""
    return RedisServer(procs, tmp_path).start()


@pytest.fixture
def engine() -> sa.Engine:
    """The run's throwaway database (TEST_DB_URL), where the workers write their rows."""
    from worker.db.engine import get_engine

    return get_engine()
