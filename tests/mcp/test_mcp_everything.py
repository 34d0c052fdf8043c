"""The runtime against a server nobody here wrote: npm `@modelcontextprotocol/server-everything`.

Install it with `scripts/install-test-servers.sh` (into .cache/node). Without node or the package
these tests fail, saying so: they never skip.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp_helpers import make_settings, service
from processes import everything_binary

from worker import mcp
from worker.errors import ToolInputRejected, UnknownTool
from worker.processes import port_open, wait_until
from worker.services.config import ServiceConfig
from worker.settings import Settings


@pytest.fixture(scope="module")
def everything_http() -> Iterator[str]:
    """server-everything over streamable HTTP; it takes its port from $PORT, so pick a free one."""
    binary = everything_binary()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = Path(tempfile.mkstemp(prefix="everything-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "streamableHttp"],
            env={"PATH": str(Path(shutil.which("node") or "node").parent), "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 30, "server-everything to listen")
        assert proc.poll() is None, f"server-everything exited:\n{log.read_text()}"
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def everything_settings() -> Settings:
    return make_settings(MCP_STDIO_ALLOWED_COMMANDS="mcp-server-everything")


@pytest.fixture(params=["stdio", "streamable_http"])
def everything(request: pytest.FixtureRequest) -> ServiceConfig:
    if request.param == "stdio":
        return service("stdio", f"{everything_binary()} stdio", api_key="everything-key-1")
    return service("streamable_http", request.getfixturevalue("everything_http"), api_key="everything-key-1")


def test_echo_sum_and_tool_list(everything: ServiceConfig, everything_settings: Settings) -> None:
    assert mcp.call_tool(everything, "echo", {"message": "hi"}, settings=everything_settings).result == [
        "Echo: hi"
    ]
    total = mcp.call_tool(everything, "get-sum", {"a": 2, "b": 3}, settings=everything_settings)
    assert "5" in total.result[0]

    names = {tool["name"] for tool in mcp.list_tools(everything, settings=everything_settings)}

    assert {"echo", "get-sum", "get-tiny-image"} <= names
    assert mcp.pool_stats()["sessions_opened"] == 1


def test_errors_from_a_typescript_server(everything: ServiceConfig, everything_settings: Settings) -> None:
    with pytest.raises(UnknownTool):
        mcp.call_tool(everything, "no-such-tool", {}, settings=everything_settings)
    with pytest.raises(ToolInputRejected, match="expected number"):
        mcp.call_tool(everything, "get-sum", {"a": "two", "b": 3}, settings=everything_settings)


def test_binary_content_is_summarised(everything: ServiceConfig, everything_settings: Settings) -> None:
    outcome = mcp.call_tool(everything, "get-tiny-image", {}, settings=everything_settings)

    image = next(block for block in outcome.result if isinstance(block, dict))
    assert image["type"] == "image" and image["mime_type"] == "image/png" and image["size_bytes"] > 0
    assert len(json.dumps(outcome.result)) < 1000


def test_structured_content(everything: ServiceConfig, everything_settings: Settings) -> None:
    outcome = mcp.call_tool(
        everything, "get-structured-content", {"location": "New York"}, settings=everything_settings
    )

    assert set(outcome.result) >= {"temperature", "conditions", "humidity"}


def test_stdio_warm_pool_and_environment(everything_settings: Settings) -> None:
    config = service("stdio", f"{everything_binary()} stdio", api_key="everything-key-1")

    for _ in range(10):
        mcp.call_tool(config, "echo", {"message": "x"}, settings=everything_settings)
    env_text = " ".join(mcp.call_tool(config, "get-env", {}, settings=everything_settings).result)

    assert mcp.pool_stats()["stdio_spawned"] == 1
    assert '"MCP_SERVICE_API_KEY": "everything-key-1"' in env_text
