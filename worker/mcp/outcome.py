"""What a tool call produced, and which `worker.errors` class a failure belongs to.

What the SDK (mcp 2.3) actually raises, measured against `worker.demo.server` (MCPServer), the
npm `@modelcontextprotocol/server-everything` and dead ports (see tests/mcp):

- connect refused / DNS failure: `httpx2.ConnectError` (streamable HTTP: inside ExceptionGroups).
- 401/403/5xx: SSE raises `httpx2.HTTPStatusError`; streamable HTTP turns any non-JSON error status
  into `MCPError(INTERNAL_ERROR, "Server returned an error response")` (404 before a session: into
  `METHOD_NOT_FOUND`), so the status is read from `Probe.http_status`, recorded by an httpx hook.
- server process gone: `MCPError(CONNECTION_CLOSED)`; over HTTP the session's task group dies with
  `httpx2.RemoteProtocolError`/`ReadError` and pending calls get `CONNECTION_CLOSED`.
- call timeout: `MCPError(REQUEST_TIMEOUT)` (the SDK sends the server a cancel and the session
  stays usable).
- stdout that is not JSON-RPC: the SDK logs it and hands the parse error to `message_handler`
  (recorded in `Probe.stream_error`); the handshake then waits until the connect timeout or EOF.
  That becomes `ProtocolError`.
- unknown tool / arguments failing the input schema: MCPServer answers with an `isError` result
  ("Unknown tool: x", "... validation error for xArguments ..."); the TypeScript SDK with
  `MCPError(INVALID_PARAMS)` ("Tool x not found", "Input validation error: ..."). The SDK never
  validates arguments client-side, so neither does the worker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx2
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from worker.errors import (
    AuthenticationFailed,
    InvalidService,
    ProtocolError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    SessionGone,
    ToolInputRejected,
    UnknownTool,
    WorkerError,
)
from worker.mcp.transports import Probe
from worker.redaction import redact

MESSAGE_MAX = 500
_PYDANTIC_LINK = re.compile(r"For further information visit \S+")
_UNKNOWN_TOOL = re.compile(r"\bunknown tool\b|\btool\b\s*['\"]?[\w.:/-]+['\"]?\s*not found", re.IGNORECASE)
_BAD_INPUT = re.compile(
    r"validation errors? for \w*arguments|input validation error|invalid arguments|invalid params",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ToolOutcome:
    """The result of one tool call that reached the tool."""

    result: Any
    is_error: bool
    message: str | None
    # Whether the result matched the tool's outputSchema (None: the tool declares none, or the
    # result is an error), and why not. A mismatch keeps the result: it is recorded, not raised.
    output_valid: bool | None = None
    output_error: str | None = None


@dataclass(frozen=True)
class Progress:
    """The latest `notifications/progress` of a running call (`message` already redacted)."""

    progress: float
    total: float | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"progress": self.progress, "total": self.total, "message": self.message}


def one_line(text: str, secrets: Iterable[str] = (), limit: int = MESSAGE_MAX) -> str:
    """Collapse whitespace, mask secrets, drop pydantic's doc links, and cut to `limit` characters."""
    text = " ".join(_PYDANTIC_LINK.sub("", redact(text, secrets)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summarise(block: Any) -> Any:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        return {"type": block.type, "mime_type": block.mime_type, "size_bytes": len(block.data) * 3 // 4}
    if isinstance(block, types.ResourceLink):
        return {
            "type": "resource_link",
            "uri": str(block.uri),
            "name": block.name,
            "mime_type": block.mime_type,
        }
    if isinstance(block, types.EmbeddedResource):
        res = block.resource
        summary: dict[str, Any] = {"type": "resource", "uri": str(res.uri), "mime_type": res.mime_type}
        if isinstance(res, types.TextResourceContents):
            summary["text"] = res.text
        else:
            summary["size_bytes"] = len(res.blob) * 3 // 4
        return summary
    return {"type": getattr(block, "type", type(block).__name__)}


def to_outcome(
    tool: str,
    result: types.CallToolResult,
    secrets: Iterable[str] = (),
    *,
    output_valid: bool | None = None,
    output_error: str | None = None,
) -> ToolOutcome:
    """Turn the SDK's result into a `ToolOutcome` (`output_valid`, `output_error`: what checking
    it against the tool's outputSchema found).

    Raises:
        UnknownTool: the server answered that it has no such tool (as an isError result).
        ToolInputRejected: the server's argument validation failed (as an isError result).
    """
    texts = [b.text for b in result.content if isinstance(b, types.TextContent)]
    if result.is_error:
        message = one_line(" ".join(texts) or "the tool reported an error without a message", secrets)
        if _UNKNOWN_TOOL.search(message):
            raise UnknownTool(f"the server has no tool {tool!r} ({message}); check the tool name")
        if _BAD_INPUT.search(message):
            raise ToolInputRejected(f"tool {tool!r} rejected its arguments: {message}")
        return ToolOutcome(result=[_summarise(b) for b in result.content], is_error=True, message=message)
    why = one_line(output_error, secrets) if output_error is not None else None
    if result.structured_content is not None:
        return ToolOutcome(result.structured_content, False, None, output_valid, why)
    return ToolOutcome([_summarise(b) for b in result.content], False, None, output_valid, why)


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def _rank(exc: BaseException) -> int:
    # A transport error explains a CONNECTION_CLOSED, never the other way round.
    if isinstance(exc, WorkerError):
        return 0
    if isinstance(exc, httpx2.HTTPError | OSError | TimeoutError):
        return 1
    if isinstance(exc, MCPError) and exc.code == types.CONNECTION_CLOSED:
        return 3
    return 2


def root_cause(exc: BaseException) -> BaseException:
    """The most telling exception in `exc` (groups unwrapped)."""
    return min(leaves(exc), key=_rank)


def _from_status(status: int, where: str) -> WorkerError:
    if status in (401, 403):
        return AuthenticationFailed(
            f"{where} refused the credentials (HTTP {status}); check the service's api_key "
            "(an oauth service: its client and scopes)"
        )
    if status == 404:
        return InvalidService(
            f"{where} answered HTTP 404; check the service url (usually ends in /mcp or /sse)"
        )
    if status >= 500 or status == 429:
        return ServerError(f"{where} answered HTTP {status}")
    return ProtocolError(f"{where} answered HTTP {status}; is this an MCP endpoint?")


def classify(exc: BaseException, where: str, probe: Probe | None, secrets: Iterable[str] = ()) -> WorkerError:
    """Map what the SDK, httpx2 or the OS raised onto the worker's error tree.

    `where` names the server for the message, e.g. "MCP server for 'reports' (streamable_http)".
    """
    cause = root_cause(exc)
    status = probe.http_status if probe else None
    text = one_line(str(cause) or type(cause).__name__, secrets, 200)
    if isinstance(cause, WorkerError):
        return cause
    if probe is not None and probe.resumed and status in (400, 404):
        # The spec says 404 for an unknown session; some servers (server-everything) say 400.
        return SessionGone(f"{where} no longer knows the session (HTTP {status})")
    if isinstance(cause, httpx2.HTTPStatusError):
        return _from_status(cause.response.status_code, where)
    if isinstance(cause, MCPError) and cause.code == types.INTERNAL_ERROR and status is not None:
        return _from_status(status, where)
    if isinstance(cause, MCPError) and cause.code == types.METHOD_NOT_FOUND and status == 404:
        return _from_status(404, where)
    if isinstance(cause, httpx2.TimeoutException | TimeoutError):
        return ServerTimeout(
            f"{where} did not answer in time ({type(cause).__name__}); raise its timeouts if slow"
        )
    if isinstance(cause, httpx2.ConnectError):
        return ServerUnavailable(f"cannot connect to {where}: {text}; is it running and is the url right?")
    if isinstance(cause, httpx2.SSEError):
        # The SDK's SSE client caps one event at 1 MiB and gives no way to raise it.
        return ProtocolError(
            f"{where} sent an unusable SSE event ({text}); use streamable HTTP for large results"
        )
    if isinstance(cause, httpx2.TransportError):
        return ServerUnavailable(f"connection to {where} failed: {type(cause).__name__}: {text}")
    if isinstance(cause, FileNotFoundError | PermissionError):
        return InvalidService(f"cannot start {where}: {text}; check the command is installed")
    if isinstance(cause, OSError):
        return ServerUnavailable(f"{where}: {type(cause).__name__}: {text}")
    if isinstance(cause, MCPError):
        return _from_mcp_error(cause, where, probe, text, secrets)
    if isinstance(cause, ValidationError | RuntimeError):
        return ProtocolError(f"{where} sent an invalid MCP message: {text}")
    return ServerError(f"{where} failed: {type(cause).__name__}: {text}")


def _from_mcp_error(
    cause: MCPError, where: str, probe: Probe | None, text: str, secrets: Iterable[str]
) -> WorkerError:
    code = cause.code
    if code == types.CONNECTION_CLOSED:
        if probe is not None and probe.transport_error is not None:
            return classify(probe.transport_error, where, None, secrets)
        if probe is not None and probe.stream_error:
            return ProtocolError(f"{where} wrote output that is not JSON-RPC; is the command an MCP server?")
        last = probe.last_stderr() if probe is not None else None
        tail = f"; last stderr line: {one_line(last, secrets, 200)}" if last else ""
        return ServerUnavailable(f"{where} closed the connection{tail}")
    if code == types.REQUEST_TIMEOUT:
        return ServerTimeout(
            f"{where} did not answer within the call timeout; raise call_timeout if it is slow"
        )
    if code == types.METHOD_NOT_FOUND:
        return UnknownTool(f"{where} does not support this request: {text}")
    if code == types.INVALID_PARAMS:
        if _UNKNOWN_TOOL.search(text):
            return UnknownTool(f"{where}: {text}; check the tool name")
        return ToolInputRejected(f"{where} rejected the arguments: {text}")
    if code in (types.PARSE_ERROR, types.INVALID_REQUEST):
        return ProtocolError(f"{where} reported a protocol error: {text}")
    return ServerError(f"{where} reported an error (code {code}): {text}")


def session_is_dead(exc: BaseException) -> bool:
    """Whether a call's failure means its session can never be used again."""
    cause = root_cause(exc)
    if isinstance(cause, MCPError):
        return cause.code == types.CONNECTION_CLOSED
    return isinstance(cause, httpx2.TransportError | OSError) and not isinstance(
        cause, httpx2.TimeoutException
    )
