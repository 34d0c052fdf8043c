"""The plain `mcp` 2.x client the baselines use (no worker code, no Celery)."""

from __future__ import annotations

import shlex
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client

TOOL = "echo"


def client_for(mode: str, target: str) -> Client:
    """A `Client` in its default mode for a stdio command line or an HTTP URL."""
    if mode == "stdio":
        argv = shlex.split(target)
        return Client(StdioServerParameters(command=argv[0], args=argv[1:]))
    if mode == "sse":
        return Client(sse_client(target))
    return Client(target)


def result_text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)
