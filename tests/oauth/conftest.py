"""Fixtures of the OAuth tests: one OAuth world (authorization server + MCP server) per module,
and a fresh MCP runtime and token cache around every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from oauth_helpers import OAuthWorld, start_oauth_world
from testenv import LOG_DIR

from worker import mcp
from worker.db.engine import session_scope
from worker.db.models import McpOAuthToken, McpService
from worker.oauth.discovery import forget_endpoints
from worker.oauth.tokens import forget_tokens


@pytest.fixture(scope="module")
def world() -> Iterator[OAuthWorld]:
    started = start_oauth_world(LOG_DIR)
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def fresh_runtime(request: pytest.FixtureRequest) -> Iterator[None]:
    """No pooled session, in-memory token or discovered endpoint carries over between tests, and
    the service and token rows a test left for the OAuth world are removed (other tests of the
    session count rows)."""
    yield
    mcp.shutdown_runtime()
    forget_tokens()
    forget_endpoints()
    if "world" in request.fixturenames:
        world: OAuthWorld = request.getfixturevalue("world")
        with session_scope() as session:
            session.execute(sa.delete(McpService).where(McpService.url.in_([world.mcp_url, world.sse_url])))
            session.execute(sa.delete(McpOAuthToken).where(McpOAuthToken.issuer == world.issuer))
