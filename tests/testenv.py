"""The test run's environment: where Postgres and Redis are, and the settings every worker module
(and every process the tests start) reads. Imported by conftest before anything from `worker`."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

ADMIN_DB_URL = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_BASE_URL = (os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379").rstrip("/")
RUN_ID = secrets.token_hex(4)
# Redis databases a run may take; a run holds one through a lease key in database 0, so test runs
# in parallel (developers, helpers) never share queues, results or remote-control channels.
REDIS_TEST_DBS = range(1, 16)
REDIS_LEASE_S = 3 * 3600
TEST_DB_NAME = f"mcp_worker_test_{RUN_ID}"
DATA_DIR = Path(tempfile.mkdtemp(prefix=f"mcp-worker-test-{RUN_ID}-"))


def _pg_url(database: str) -> str:
    url = sa.make_url(ADMIN_DB_URL)
    if url.drivername in ("postgresql+asyncpg", "postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg2")
    return url.set(database=database).render_as_string(hide_password=False)


def _redis_base() -> str:
    base = REDIS_BASE_URL
    # Drop any database number the caller gave; the tests pick their own.
    head, _, tail = base.rpartition("/")
    if tail.isdigit() and head.count("/") >= 2:
        base = head
    return base


_claimed: list[int] = []


def _claim_free_db() -> int:
    import redis

    client = redis.Redis.from_url(f"{_redis_base()}/0", socket_connect_timeout=3)
    for db in REDIS_TEST_DBS:
        if client.set(f"mcp-worker-test-db:{db}", RUN_ID, nx=True, ex=REDIS_LEASE_S):
            _claimed.append(db)
            redis.Redis.from_url(f"{_redis_base()}/{db}").flushdb()
            return db
    raise RuntimeError("every Redis test database is held by another test run; set TEST_REDIS_DB")


def _claim_redis_db() -> int:
    """TEST_REDIS_DB (plus the parallel process's number) when set, else the first database no other
    live run holds (0 if Redis is down:
    the session start then reports Redis as unreachable)."""
    if os.environ.get("TEST_REDIS_DB"):
        # Parallel test processes (pytest-xdist's gw0, gw1, ...) take the ones after it.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        return int(os.environ["TEST_REDIS_DB"]) + int(worker.removeprefix("gw") or 0)
    import redis

    try:
        return _claim_free_db()
    except redis.RedisError:
        return 0


def extra_redis_url() -> str:
    """A further Redis database of this run's own (empty), for a worker that must not share the
    session worker's queues; given back with the rest at the end of the session."""
    return f"{_redis_base()}/{_claim_free_db()}"


def redis_dbs_claimed() -> int:
    """How many Redis databases this run holds now (a mark for `release_redis_dbs_since`)."""
    return len(_claimed)


def release_redis_dbs_since(mark: int) -> None:
    """Flush and give back the further databases claimed after `mark` (the end of a module: at
    most a few are held at once, however many modules ask for one)."""
    import redis

    given, _claimed[mark:] = _claimed[mark:], []
    try:
        client = redis.Redis.from_url(f"{_redis_base()}/0", socket_connect_timeout=3)
        for db in given:
            redis.Redis.from_url(f"{_redis_base()}/{db}").flushdb()
            if client.get(f"mcp-worker-test-db:{db}") == RUN_ID.encode():
                client.delete(f"mcp-worker-test-db:{db}")
    except redis.RedisError:
        pass  # their leases run out on their own


def release_redis_db() -> None:
    """Give the run's Redis databases back (called at the end of the session)."""
    import redis

    try:
        client = redis.Redis.from_url(f"{_redis_base()}/0", socket_connect_timeout=3)
        for db in _claimed:
            key = f"mcp-worker-test-db:{db}"
            if client.get(key) == RUN_ID.encode():
                client.delete(key)
    except redis.RedisError:
        pass


REDIS_TEST_DB = _claim_redis_db()


def _redis_url() -> str:
    return f"{_redis_base()}/{REDIS_TEST_DB}"


OPENAI_TEST_KEY = "sk-test-openai-key-for-the-fake-0001"
TEST_DB_URL = _pg_url(TEST_DB_NAME)
BROKER_URL = _redis_url()

# Settings every worker module (and subprocess) reads. Short limits keep failure tests quick.
TEST_ENV = {
    "DATABASE_URL": TEST_DB_URL,
    "CELERY_BROKER_URL": BROKER_URL,
    "CELERY_RESULT_BACKEND": BROKER_URL,
    "MCP_DATA_DIR": str(DATA_DIR),
    "DEVELOPMENT_MODE": "false",
    # The suite runs in parallel processes on few cores: a Python stdio server can take seconds
    # to import the SDK and answer the handshake.
    "MCP_CONNECT_TIMEOUT": "15",
    "MCP_CALL_TIMEOUT": "5",
    "MCP_TASK_SOFT_TIME_LIMIT": "30",
    "MCP_MAX_RETRIES": "2",
    "MCP_STDIO_ALLOWED_COMMANDS": f"mcp-worker {Path(sys.executable).parent / 'mcp-worker'} {sys.executable}",
    "MCP_STDIO_DEFAULT_COMMAND": f"{sys.executable} -m worker.demo.server --transport stdio",
    # Refinement goes to the fake OpenAI server the session starts (OPENAI_BASE_URL is set then).
    "OPENAI_API_KEY": OPENAI_TEST_KEY,
    "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # nothing listens: never the real API
    "OPENAI_MODEL": "gpt-fake-1",
    "OPENAI_TIMEOUT": "2",
    "OPENAI_MAX_RETRIES": "0",
    "LOG_LEVEL": "INFO",
}
os.environ.update(TEST_ENV)
for _name in ("MCP_CONFIG_FILE", "MCP_ALLOWED_HOSTS", "MCP_SECRET_KEY"):
    os.environ.pop(_name, None)


LOG_DIR = DATA_DIR / "logs"
DEMO_HTTP_TOKEN = "http-demo-token-0001"
DEMO_SSE_TOKEN = "sse-demo-token-0002"
