"""Fixtures for the MCP runtime tests: demo servers on loopback and service configs.

Helpers live in `mcp_helpers.py`. Every test starts and ends with a fresh runtime (no sessions,
zeroed pool counters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mcp_helpers import DEMO_TOKEN, STDIO_DEMO, DemoServer, make_settings, service, start_demo

from worker import mcp
from worker.services.config import ServiceConfig
from worker.settings import Settings


@pytest.fixture(scope="session")
def http_url() -> Iterator[str]:
    """Streamable HTTP demo server accepting any credential."""
    server = start_demo("streamable-http")
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def sse_url() -> Iterator[str]:
    """SSE demo server accepting any credential."""
    server = start_demo("sse")
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def token_http_url() -> Iterator[str]:
    """Streamable HTTP demo server that requires DEMO_TOKEN."""
    server = start_demo("streamable-http", token=DEMO_TOKEN)
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def token_sse_url() -> Iterator[str]:
    """SSE demo server that requires DEMO_TOKEN."""
    server = start_demo("sse", token=DEMO_TOKEN)
    yield server.url
    server.stop()


@pytest.fixture
def own_http_server() -> Iterator[Callable[..., DemoServer]]:
    """Start demo servers that this test may crash or kill; all are stopped afterwards."""
    started: list[DemoServer] = []

    def start(transport: str = "streamable-http", **kwargs: Any) -> DemoServer:
        server = start_demo(transport, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def configs(http_url: str, sse_url: str) -> dict[str, ServiceConfig]:
    """One demo service per transport, all with the same key."""
    return {
        "stdio": service("stdio", STDIO_DEMO),
        "sse": service("sse", sse_url),
        "streamable_http": service("streamable_http", http_url),
    }


@pytest.fixture(autouse=True)
def fresh_runtime() -> Iterator[None]:
    """Each test starts and ends without sessions, so pool counters are its own."""
    mcp.shutdown_runtime()
    yield
    mcp.shutdown_runtime()
