"""The plain `mcp` 2.x client the baselines use (no worker code, no Celery)."""

from __future__ import annotations

import shlex
import sys
from typing import Any, TextIO

from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client

TOOL = "echo"


def client_for(mode: str, target: str, errlog: TextIO = sys.stderr) -> Client:
    """A `Client` in its default mode for a stdio command line (its stderr to `errlog`) or an HTTP URL."""
    if mode == "stdio":
        argv = shlex.split(target)
        params = StdioServerParameters(command=argv[0], args=argv[1:])
        if errlog is sys.stderr:
            return Client(params)
        return Client(stdio_client(params, errlog=errlog))
    if mode == "sse":
        return Client(sse_client(target))
    return Client(target)


def result_text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)
