"""Test setup: a throwaway Postgres database, a Redis database, and the worker's settings.

Postgres and Redis are reached at DATABASE_URL / REDIS_URL when set, else the local defaults.
If either is unreachable the run stops at once with a message saying what to start: tests never
skip silently for a missing service.

The environment is set before anything from `worker` is imported, so every module (and every
worker process the tests start) sees the test database and broker.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

ADMIN_DB_URL = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_BASE_URL = (os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379").rstrip("/")
REDIS_TEST_DB = int(os.environ.get("TEST_REDIS_DB", "13"))
RUN_ID = secrets.token_hex(4)
TEST_DB_NAME = f"mcp_worker_test_{RUN_ID}"
DATA_DIR = Path(tempfile.mkdtemp(prefix=f"mcp-worker-test-{RUN_ID}-"))


def _pg_url(database: str) -> str:
    url = sa.make_url(ADMIN_DB_URL)
    if url.drivername in ("postgresql+asyncpg", "postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg2")
    return url.set(database=database).render_as_string(hide_password=False)


def _redis_url() -> str:
    base = REDIS_BASE_URL
    # Drop any database number the caller gave; the tests own one database.
    head, _, tail = base.rpartition("/")
    if tail.isdigit() and head.count("/") >= 2:
        base = head
    return f"{base}/{REDIS_TEST_DB}"


TEST_DB_URL = _pg_url(TEST_DB_NAME)
BROKER_URL = _redis_url()

# Settings every worker module (and subprocess) reads. Short limits keep failure tests quick.
TEST_ENV = {
    "DATABASE_URL": TEST_DB_URL,
    "CELERY_BROKER_URL": BROKER_URL,
    "CELERY_RESULT_BACKEND": BROKER_URL,
    "MCP_DATA_DIR": str(DATA_DIR),
    "DEVELOPMENT_MODE": "false",
    "MCP_CONNECT_TIMEOUT": "5",
    "MCP_CALL_TIMEOUT": "5",
    "MCP_TASK_SOFT_TIME_LIMIT": "30",
    "MCP_MAX_RETRIES": "2",
    "MCP_STDIO_ALLOWED_COMMANDS": f"mcp-worker {Path(sys.executable).parent / 'mcp-worker'} {sys.executable}",
    "MCP_STDIO_DEFAULT_COMMAND": f"{sys.executable} -m worker.demo_server --transport stdio",
    "OPENAI_API_KEY": "",
    "LOG_LEVEL": "INFO",
}
os.environ.update(TEST_ENV)
for _name in ("MCP_CONFIG_FILE", "MCP_ALLOWED_HOSTS", "MCP_SECRET_KEY"):
    os.environ.pop(_name, None)


def _fail(message: str) -> None:
    pytest.exit(message, returncode=3)


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        admin = sa.create_engine(
            _pg_url(sa.make_url(ADMIN_DB_URL).database or "postgres"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{TEST_DB_NAME}"'))
        admin.dispose()
    except Exception as exc:
        _fail(
            f"PostgreSQL is not reachable at {sa.make_url(ADMIN_DB_URL).render_as_string()} ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). Start PostgreSQL or set DATABASE_URL "
            "to a server where this user may create databases."
        )
    try:
        import redis

        redis.Redis.from_url(BROKER_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        _fail(
            f"Redis is not reachable at {BROKER_URL} ({type(exc).__name__}: {exc}). Start Redis or set REDIS_URL."
        )

    from worker import schema

    schema.upgrade(TEST_DB_URL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        from worker import mcp
        from worker.db import dispose_engine

        mcp.shutdown_runtime()
        dispose_engine()
    except Exception as exc:  # the run is over; report, but do not mask the test result
        print(f"warning: cleanup failed: {exc}", file=sys.stderr)
    try:
        admin = sa.create_engine(_pg_url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{TEST_DB_NAME}" WITH (FORCE)'))
        admin.dispose()
    except Exception as exc:
        print(f"warning: could not drop {TEST_DB_NAME}: {exc}", file=sys.stderr)


@pytest.fixture
def db_session() -> Iterator[sa.orm.Session]:
    """A session in a transaction that is rolled back after the test (nothing persists)."""
    from sqlalchemy.orm import Session

    from worker.db import get_engine

    connection = get_engine().connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()
        transaction.rollback()
        connection.close()


@pytest.fixture
def clean_db() -> Iterator[None]:
    """Empty every table before the test, for tests whose writes happen in other processes."""
    from worker.db import get_engine
    from worker.models import Base

    def truncate() -> None:
        with get_engine().begin() as conn:
            names = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))

    truncate()
    yield


@pytest.fixture
def redis_flushed() -> Iterator[None]:
    """The test Redis database, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield
    client.flushdb()
    client.close()


LOG_DIR = DATA_DIR / "logs"
DEMO_HTTP_TOKEN = "http-demo-token-0001"
DEMO_SSE_TOKEN = "sse-demo-token-0002"


@pytest.fixture(scope="session")
def demo_http() -> Iterator[str]:
    """The demo server over streamable HTTP, requiring DEMO_HTTP_TOKEN; yields its URL."""
    from processes import start_demo_server

    proc, url = start_demo_server("streamable-http", LOG_DIR, token=DEMO_HTTP_TOKEN)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def demo_sse() -> Iterator[str]:
    """The demo server over SSE, requiring DEMO_SSE_TOKEN; yields its URL."""
    from processes import start_demo_server

    proc, url = start_demo_server("sse", LOG_DIR, token=DEMO_SSE_TOKEN)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def worker_proc() -> Iterator[object]:
    """One real Celery worker (prefork, 2 processes) on the test Redis and Postgres."""
    import redis
    from processes import start_worker

    redis.Redis.from_url(BROKER_URL).flushdb()
    proc = start_worker(f"tests-{RUN_ID}", LOG_DIR)
    yield proc
    proc.stop()
