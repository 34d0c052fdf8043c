"""The runtime's pieces without servers: auth, environment, timeouts, results, classification."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx2
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError
from mcp_helpers import DEMO_TOKEN, make_settings, service

from worker.demo.server import load_projects, parse_week, weekly_report
from worker.errors import (
    AuthenticationFailed,
    CommandNotAllowed,
    InvalidService,
    ProtocolError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    ToolInputRejected,
    UnknownTool,
)
from worker.mcp import loop
from worker.mcp.outcome import classify, one_line, session_is_dead, to_outcome
from worker.mcp.transports import Probe, auth_headers, stdio_environment
from worker.redaction import MASK
from worker.services.config import stdio_command, timeouts_for

WHERE = "MCP server for 'demo'"


def test_auth_headers() -> None:
    assert auth_headers(service("sse", "http://h/sse", api_key="k1")) == {"Authorization": "Bearer k1"}
    custom = service("sse", "http://h/sse", api_key="k1", auth={"type": "api_key", "header": "X-API-Key"})
    assert auth_headers(custom) == {"X-API-Key": "k1"}
    assert auth_headers(service("sse", "http://h/sse", api_key="k1", auth={"type": "none"})) == {}
    assert auth_headers(service("sse", "http://h/sse", api_key="")) == {}


def test_stdio_environment_maps_aliases_and_literals() -> None:
    config = service(
        "stdio",
        "srv",
        api_key="k1",
        endpoint="https://op",
        auth={"env": {"OP_KEY": "$api_key", "OP_URL": "$endpoint", "MODE": "ro"}},
    )

    assert stdio_environment(config) == {
        "MCP_SERVICE_ENDPOINT": "https://op",
        "MCP_SERVICE_API_KEY": "k1",
        "OP_KEY": "k1",
        "OP_URL": "https://op",
        "MODE": "ro",
    }
    assert "MCP_SERVICE_API_KEY" not in stdio_environment(service("stdio", "srv", auth={"type": "none"}))


def test_stdio_command_allow_list() -> None:
    settings = make_settings(MCP_STDIO_ALLOWED_COMMANDS="npx /opt/bin/server")

    assert stdio_command(service("stdio", "npx -y pkg"), settings) == ("npx", "-y", "pkg")
    assert stdio_command(service("stdio", "/usr/local/bin/npx pkg"), settings)[0] == "/usr/local/bin/npx"
    assert stdio_command(service("stdio", "/opt/bin/server"), settings) == ("/opt/bin/server",)
    with pytest.raises(CommandNotAllowed, match="MCP_STDIO_ALLOWED_COMMANDS"):
        stdio_command(
            service("stdio", "/tmp/server"), settings
        )  # only the full path /opt/bin/server is allowed
    with pytest.raises(CommandNotAllowed):
        stdio_command(service("stdio", "bash -c 'rm -rf /'"), settings)
    with pytest.raises(InvalidService, match="MCP_STDIO_DEFAULT_COMMAND"):
        stdio_command(service("stdio", None), settings)


def test_timeouts_default_and_overrides() -> None:
    settings = make_settings(MCP_CONNECT_TIMEOUT="7", MCP_CALL_TIMEOUT="11")

    plain = timeouts_for(service("sse", "http://h"), settings)
    assert (plain.connect, plain.call) == (7.0, 11.0)
    tuned = timeouts_for(
        service("sse", "http://h", params={"call_timeout": 2}, auth={"connect_timeout": 3}), settings
    )
    assert (tuned.connect, tuned.call) == (3.0, 2.0)


def test_one_line_masks_secrets_and_truncates() -> None:
    text = one_line("token   sekret-123\nfailed " + "y" * 1000, ["sekret-123"])

    assert "sekret-123" not in text and MASK in text and "\n" not in text and len(text) == 500


def test_outcome_from_structured_and_mixed_content() -> None:
    structured = types.CallToolResult(
        content=[types.TextContent(type="text", text="{}")], structured_content={"a": 1}, is_error=False
    )
    assert to_outcome("t", structured).result == {"a": 1}

    mixed = types.CallToolResult(
        content=[
            types.TextContent(type="text", text="see"),
            types.ImageContent(type="image", data="A" * 4000, mime_type="image/png"),
            types.EmbeddedResource(
                type="resource",
                resource=types.BlobResourceContents(
                    uri="file:///x.bin", blob="B" * 400, mime_type="application/zip"
                ),
            ),
        ],
        is_error=False,
    )
    result = to_outcome("t", mixed).result
    assert result[0] == "see"
    assert result[1] == {"type": "image", "mime_type": "image/png", "size_bytes": 3000}
    assert result[2]["type"] == "resource" and result[2]["size_bytes"] == 300 and "blob" not in result[2]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Unknown tool: nope", UnknownTool),
        ("MCP error -32602: Tool nope not found", UnknownTool),
        (
            "Error executing tool echo: 1 validation error for echoArguments\nmessage\n  Field required",
            ToolInputRejected,
        ),
        ("MCP error -32602: Input validation error: Invalid arguments for tool echo", ToolInputRejected),
    ],
)
def test_is_error_results_that_are_not_tool_failures(text: str, error: type[Exception]) -> None:
    result = types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)

    with pytest.raises(error):
        to_outcome("nope", result)


def test_tool_failure_outcome() -> None:
    result = types.CallToolResult(
        content=[types.TextContent(type="text", text="quota exceeded for k-123456")], is_error=True
    )

    outcome = to_outcome("t", result, ["k-123456"])

    assert outcome.is_error and outcome.message == f"quota exceeded for {MASK}"


def _status_error(status: int) -> httpx2.HTTPStatusError:
    request = httpx2.Request("GET", "http://h/sse")
    return httpx2.HTTPStatusError("boom", request=request, response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
        (404, InvalidService),
        (500, ServerError),
        (503, ServerError),
        (429, ServerError),
        (400, ProtocolError),
    ],
)
def test_http_status_classification(status: int, error: type[Exception]) -> None:
    assert isinstance(classify(_status_error(status), WHERE, None), error)
    # Streamable HTTP reports the status only as INTERNAL_ERROR; the probe saw the real one.
    probe = Probe(label="demo", http_status=status)
    wrapped = ExceptionGroup(
        "tg", [ExceptionGroup("tg", [MCPError(types.INTERNAL_ERROR, "Server returned an error response")])]
    )
    assert isinstance(classify(wrapped, WHERE, probe), error)


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx2.ConnectError("All connection attempts failed"), ServerUnavailable),
        (httpx2.ConnectTimeout("slow"), ServerTimeout),
        (httpx2.ReadTimeout("slow"), ServerTimeout),
        (httpx2.RemoteProtocolError("Server disconnected"), ServerUnavailable),
        (ConnectionResetError(104, "reset"), ServerUnavailable),
        (FileNotFoundError(2, "No such file"), InvalidService),
        (MCPError(types.CONNECTION_CLOSED, "Connection closed"), ServerUnavailable),
        (MCPError(types.REQUEST_TIMEOUT, "timed out"), ServerTimeout),
        (MCPError(types.METHOD_NOT_FOUND, "Method not found"), UnknownTool),
        (MCPError(types.INVALID_PARAMS, "Unknown tool: x"), UnknownTool),
        (MCPError(types.INVALID_PARAMS, "bad input"), ToolInputRejected),
        (MCPError(types.PARSE_ERROR, "Parse error"), ProtocolError),
        (MCPError(types.INTERNAL_ERROR, "kaboom"), ServerError),
    ],
)
def test_exception_classification(exc: Exception, error: type[Exception]) -> None:
    assert isinstance(classify(exc, WHERE, None), error)


def test_transport_error_beats_connection_closed_and_garbage_is_protocol_error() -> None:
    group = ExceptionGroup("tg", [MCPError(types.CONNECTION_CLOSED, "closed"), httpx2.ReadError("reset")])
    assert isinstance(classify(group, WHERE, None), ServerUnavailable)
    assert "ReadError" in str(classify(group, WHERE, None))

    probe = Probe(label="demo", stream_error="ValidationError")
    assert isinstance(classify(MCPError(types.CONNECTION_CLOSED, "closed"), WHERE, probe), ProtocolError)
    assert session_is_dead(MCPError(types.CONNECTION_CLOSED, "closed"))
    assert not session_is_dead(MCPError(types.REQUEST_TIMEOUT, "slow"))


def test_messages_never_carry_the_key() -> None:
    error = classify(httpx2.ConnectError("failed for http://u:k-secret-1@h"), WHERE, None, ["k-secret-1"])

    assert "k-secret-1" not in str(error)


def test_run_sync_bounds_the_wait() -> None:
    import asyncio

    async def forever() -> None:
        await asyncio.sleep(60)

    with pytest.raises(ServerTimeout):
        loop.run_sync(forever(), 0.2)
    assert loop.run_sync(asyncio.sleep(0, result=5), 5) == 5


def test_no_loop_at_import() -> None:
    code = "import worker.mcp, worker.mcp.loop as l, threading; print(l.loop_is_running(), threading.active_count())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert done.stdout.split() == ["False", "1"]


def test_weekly_report_is_deterministic_per_week() -> None:
    projects = load_projects()
    first = weekly_report(projects, 5, "2026-W47")

    assert first == weekly_report(projects, 5, "2026-W47")
    assert parse_week("2026-W01")[1].isoformat() == "2025-12-29"
    overdue = {p["id"] for p in first["work_packages"] if p["overdue"]}
    assert overdue == {501, 503, 505, 507}  # due by Sunday 22 Nov and not Completed
    assert 2 <= len(projects) <= 3
    with pytest.raises(ValueError, match="unknown project_id 42"):
        weekly_report(projects, 42, None)
    with pytest.raises(ValueError, match="2026-W47"):
        parse_week("week 47")
    with pytest.raises(ValueError, match="does not exist"):
        parse_week("2026-W54")


def test_stdio_demo_server_refuses_a_wrong_key() -> None:
    env = {**os.environ, "MCP_SERVICE_API_KEY": "wrong"}
    argv = [sys.executable, "-m", "worker.demo.server", "--transport", "stdio", "--token", DEMO_TOKEN]

    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False
    )

    assert done.returncode == 2 and "does not match" in done.stderr and DEMO_TOKEN not in done.stderr


def test_http_demo_server_answers_401_without_the_token(token_http_url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}

    assert httpx2.post(token_http_url, json=body, headers=headers, timeout=5).status_code == 401
    wrong = httpx2.post(token_http_url, json=body, headers={**headers, "X-API-Key": "nope"}, timeout=5)
    assert wrong.status_code == 401
    right = httpx2.post(token_http_url, json=body, headers={**headers, "X-API-Key": DEMO_TOKEN}, timeout=5)
    assert right.status_code != 401
