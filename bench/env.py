"""The bench's own world on loopback: Redis, a throwaway Postgres database, demo MCP servers, workers.

`BenchEnv` is a context manager; leaving it stops every process it started and drops the database.
The environment it builds is put into `os.environ` before anything from `worker` is imported
(settings are read once, and Celery reads CELERY_BROKER_URL from the environment before any app
configuration).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa

from bench.procs import Proc, spawn
from worker import names
from worker.processes import free_port, start_listening

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT_S = 60.0
STDIO_COMMAND = f"{sys.executable} -m worker.demo.server --transport stdio"
# The worker's queue and the bench's user ids.
QUEUE = names.TOOLS_QUEUE
SLOW_SERVICE = "slow"
USER = "bench"
MEMORY_USERS = 100


def _pg_url(admin: str, database: str) -> str:
    url = sa.make_url(admin)
    if url.drivername in ("postgresql+asyncpg", "postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg2")
    return url.set(database=database).render_as_string(hide_password=False)


class BenchEnv:
    """Everything the cases need; see the module docstring."""

    def __init__(self, *, concurrency: int, redis_url: str | None, keep_logs: bool) -> None:
        self.concurrency = concurrency
        self.run_id = secrets.token_hex(4)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"mcp-worker-bench-{self.run_id}-"))
        self.log_dir = self.tmp / "logs"
        self.keep_logs = keep_logs
        self.admin_url = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL
        self.db_name = f"mcp_worker_bench_{self.run_id}"
        self.db_url = _pg_url(self.admin_url, self.db_name)
        self._given_redis = redis_url
        self.redis_url = ""
        self.procs: list[Proc] = []
        self.redis_proc: Proc | None = None
        self.demo_servers: list[Proc] = []
        self.worker_names: list[str] = []
        self.http_url = ""
        self.sse_url = ""
        self._db_created = False

    # ------------------------------------------------------------------ setup

    def __enter__(self) -> BenchEnv:
        try:
            self._start_redis()
            self._create_database()
            os.environ.update(self.environment())
            # A services file or a host allowlist in the caller's shell would break the bench's
            # services; other settings pass through (they are the operator's to benchmark).
            for name in ("MCP_CONFIG_FILE", "MCP_ALLOWED_HOSTS"):
                os.environ.pop(name, None)
            from worker.db import schema
            from worker.db.engine import dispose_engine
            from worker.settings import reset_settings

            # In case anything read the settings before the environment was set.
            reset_settings()
            dispose_engine()

            schema.upgrade(self.db_url)
            self.http_url = self._start_demo("streamable-http")
            self.sse_url = self._start_demo("sse")
            self._add_services()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_redis(self) -> None:
        if self._given_redis:
            self.redis_url = self._given_redis
        else:
            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit("redis-server is not installed; pass --redis-url to use a Redis database")
            port = free_port()
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            proc = start_listening("redis", argv, port, os.environ, self.log_dir, START_TIMEOUT_S)
            self.procs.append(proc)
            self.redis_proc = proc
            self.redis_url = f"redis://127.0.0.1:{port}/0"
        import redis

        redis.Redis.from_url(self.redis_url, socket_connect_timeout=3).flushdb()

    def _create_database(self) -> None:
        admin = sa.create_engine(_pg_url(self.admin_url, "postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.db_name}"'))
        except sa.exc.OperationalError as exc:
            raise SystemExit(f"PostgreSQL is not reachable at {self.admin_url}: {exc}") from None
        finally:
            admin.dispose()
        self._db_created = True

    def environment(self) -> dict[str, str]:
        """The production settings, pointed at the bench's own Redis, database and folder."""
        from cryptography.fernet import Fernet

        return {
            "DATABASE_URL": self.db_url,
            "CELERY_BROKER_URL": self.redis_url,
            "CELERY_RESULT_BACKEND": self.redis_url,
            "MCP_DATA_DIR": str(self.tmp / "data"),
            "DEVELOPMENT_MODE": "false",
            # Credentials encrypted at rest, as an operator runs it.
            "MCP_SECRET_KEY": Fernet.generate_key().decode(),
            "MCP_STDIO_ALLOWED_COMMANDS": sys.executable,
            "LOG_LEVEL": "INFO",
            # The worker imports bench.tasks (-I) from the checkout.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }

    def _start_demo(self, transport: str) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "worker.demo.server", "--transport", transport, "--port", str(port)]
        argv.append("--test-tools")  # `sleep` (it awaits) and `concurrency`, for the slow-tool cases
        proc = start_listening(f"demo-{transport}", argv, port, os.environ, self.log_dir, START_TIMEOUT_S)
        self.procs.append(proc)
        self.demo_servers.append(proc)
        return f"http://127.0.0.1:{port}{'/sse' if transport == 'sse' else '/mcp'}"

    def _add_services(self) -> None:
        from worker.db.engine import session_scope
        from worker.services.store import save_service

        def record(user: str, desc: str, mode: str, url: str, key: str) -> dict[str, Any]:
            return {"user_id": user, "desc": desc, "interaction_mode": mode, "url": url, "api_key": key}

        with session_scope() as session:
            save_service(session, record(USER, "stdio", "stdio", STDIO_COMMAND, "bench-key-stdio"))
            save_service(
                session, record(USER, "streamable_http", "streamable_http", self.http_url, "bench-key-http")
            )
            save_service(session, record(USER, "sse", "sse", self.sse_url, "bench-key-sse"))
            # The slow-tool cases measure the worker: the service's own limit stays out of the way.
            slow = record(USER, SLOW_SERVICE, "streamable_http", self.http_url, "bench-key-slow")
            save_service(session, {**slow, "params": {"max_concurrency": 100_000}})
            for i in range(MEMORY_USERS):
                user = f"mem-{i:03d}"
                save_service(
                    session, record(user, "memory", "streamable_http", self.http_url, f"mem-key-{i:03d}")
                )

    def target(self, mode: str) -> str:
        """What a per-call client connects to for `mode`."""
        return {"stdio": STDIO_COMMAND, "streamable_http": self.http_url, "sse": self.sse_url}[mode]

    # ------------------------------------------------------------------ workers

    def start_worker(self, name: str, concurrency: int | None = None) -> Proc:
        """The tools worker as production runs it: `mcp-worker worker -Q mcp.tools` with its own
        defaults (the threads pool, MCP_TOOLS_CONCURRENCY in flight), events on as Flower turns
        them on, plus `-I bench.tasks`. With `concurrency`: `celery -A worker worker -P prefork
        -c N` as docker-compose.yml ran it before. Waits until it answers a ping; it is the
        worker the cases talk to from then on."""
        from worker.cli.supervise import node_names, process_count
        from worker.settings import get_settings

        hostname = f"{name}-{self.run_id}@{socket.gethostname()}"
        if concurrency is None:
            argv = [sys.executable, "-m", "worker.cli", "worker", "-Q", QUEUE]
            processes = process_count(get_settings())
            # More than one: the threads-pool processes `mcp-worker worker` supervises.
            nodes = node_names(hostname, processes) if processes > 1 else [hostname]
        else:
            argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", QUEUE]
            argv += ["-c", str(concurrency), "-P", "prefork", "--loglevel", "INFO"]
            nodes = [hostname]
        argv += ["-n", hostname, "-E", "-I", "bench.tasks"]
        proc = spawn(name, argv, os.environ, self.log_dir, cwd=REPO)
        self.procs.append(proc)

        proc.wait_for(
            lambda: set(nodes) <= self.ping(nodes),
            START_TIMEOUT_S,
            f"worker {', '.join(nodes)}",
            interval=0.2,
        )
        proc.name = hostname
        self.worker_names = nodes
        return proc

    def ping(self, nodes: list[str]) -> set[str]:
        from worker.celery import app

        replies = app.control.ping(destination=nodes, timeout=0.5) or []
        return {name for reply in replies for name in reply}

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    # ------------------------------------------------------------------ teardown

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
        with contextlib.suppress(Exception):
            from worker import mcp
            from worker.db.engine import dispose_engine

            mcp.shutdown_runtime()
            dispose_engine()
        if self._db_created:
            admin = sa.create_engine(_pg_url(self.admin_url, "postgres"), isolation_level="AUTOCOMMIT")
            try:
                for _ in range(3):
                    try:
                        with admin.connect() as conn:
                            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
                        break
                    except sa.exc.OperationalError:
                        time.sleep(1)
            finally:
                admin.dispose()
        if exc_type is None and not self.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)
