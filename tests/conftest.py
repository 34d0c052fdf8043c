"""Test setup: a throwaway Postgres database, a Redis database, and the worker's settings.

Postgres and Redis are reached at DATABASE_URL / REDIS_URL when set, else the local defaults.
If either is unreachable the run stops at once with a message saying what to start: tests never
skip silently for a missing service.

The environment is set before anything from `worker` is imported, so every module (and every
worker process the tests start) sees the test database and broker.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from testenv import (
    ADMIN_DB_URL,
    BROKER_URL,
    DEMO_HTTP_TOKEN,
    DEMO_SSE_TOKEN,
    LOG_DIR,
    RUN_ID,
    TEST_DB_NAME,
    TEST_DB_URL,
    _pg_url,
    redis_dbs_claimed,
    release_redis_db,
    release_redis_dbs_since,
)


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

    from worker.db import schema

    schema.upgrade(TEST_DB_URL)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        from worker import mcp
        from worker.db.engine import dispose_engine

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
    release_redis_db()


@pytest.fixture(scope="module", autouse=True)
def _give_back_further_redis_dbs() -> Iterator[None]:
    """Redis has 16 databases and parallel runs share them: a module's further ones
    (`testenv.extra_redis_url`) go back when the module ends."""
    mark = redis_dbs_claimed()
    yield
    release_redis_dbs_since(mark)


@pytest.fixture
def db_session() -> Iterator[sa.orm.Session]:
    """A session in a transaction that is rolled back after the test (nothing persists)."""
    from sqlalchemy.orm import Session

    from worker.db.engine import get_engine

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
    from worker.db.engine import get_engine
    from worker.db.models import Base

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
def openai_fake() -> Iterator[object]:
    """The fake OpenAI server every worker of the run refines through; tests set its mode."""
    import os

    from fakes.openai_server import FakeOpenAI

    with FakeOpenAI(hang_limit=10.0) as fake:
        os.environ["OPENAI_BASE_URL"] = fake.base_url
        yield fake
        os.environ.pop("OPENAI_BASE_URL", None)


@pytest.fixture(scope="session")
def worker_proc(openai_fake: object) -> Iterator[object]:
    """The session's workers on the test Redis and Postgres, as production runs them: the
    production tools worker (`mcp-worker worker -Q mcp.tools`: threads, one process per core) and
    a prefork worker (2 processes) on the reports and schedule queues (`processes.SessionWorkers`)."""
    import redis
    from processes import SessionWorkers, start_tools_worker, start_worker

    redis.Redis.from_url(BROKER_URL).flushdb()
    tools = start_tools_worker(f"tests-tools-{RUN_ID}", LOG_DIR)
    try:
        reports = start_worker(f"tests-{RUN_ID}", LOG_DIR, queues="mcp.reports,mcp.schedule")
    except BaseException:
        tools.stop()
        raise
    workers = SessionWorkers(tools=tools, reports=reports)
    yield workers
    workers.stop()


@pytest.fixture
def one_connection(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    """Rebuilds this process's engine with a pool of exactly one connection (so each checkout gets
    the same one) and the given DB_POOL_PING_IDLE_S; the test's own engine comes back afterwards."""
    from worker.db.engine import dispose_engine
    from worker.settings import reset_settings

    def build(ping_idle_s: float) -> None:
        monkeypatch.setenv("DB_POOL_SIZE", "1")
        monkeypatch.setenv("DB_MAX_OVERFLOW", "0")
        monkeypatch.setenv("DB_POOL_PING_IDLE_S", str(ping_idle_s))
        reset_settings()
        dispose_engine()

    yield build
    dispose_engine()
    monkeypatch.undo()
    reset_settings()
