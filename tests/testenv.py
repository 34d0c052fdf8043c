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
    "MCP_CONNECT_TIMEOUT": "5",
    "MCP_CALL_TIMEOUT": "5",
    "MCP_TASK_SOFT_TIME_LIMIT": "30",
    "MCP_MAX_RETRIES": "2",
    "MCP_STDIO_ALLOWED_COMMANDS": f"mcp-worker {Path(sys.executable).parent / 'mcp-worker'} {sys.executable}",
    "MCP_STDIO_DEFAULT_COMMAND": f"{sys.executable} -m worker.demo_server --transport stdio",
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
