"""An OpenProject-like MCP server for demos, tests and benchmarks.

    python -m worker.demo.server --transport streamable-http --port 0 [--token T] [--test-tools]

Tools: `fetch_weekly_report`, `list_projects`, `echo`, `whoami`; with `--test-tools` (or
`MCP_DEMO_TEST_TOOLS=1`) also `sleep`, `concurrency`, `fail`, `big_result`, `crash`, `env_digest`,
`count_up` (progress), `confirm_delete` (asks for input) and `mismatched_output` (a result that
breaks its own outputSchema), which
exist to inject faults and must never be enabled on a server anyone else can reach.

The data lives in `worker/demo/data/demo_projects.json`. Due dates are stored as offsets from the Monday
of the requested ISO week, so every week shows the same mix of overdue, due and future work and a
report for a given week is deterministic. A work package is overdue when it is not Completed and
its due date is on or before the Sunday that ends the requested week.

When a token is set (`--token` or `MCP_DEMO_TOKEN`), HTTP requests must carry it as
`Authorization: Bearer <token>` or `X-API-Key: <token>` (else 401), and a stdio server refuses to
start (exit 2) unless `MCP_SERVICE_API_KEY` equals it. The server never reports a credential back,
only the first 16 hex digits of its SHA-256 (`whoami`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

DATA_FILE = Path(__file__).with_name("data") / "demo_projects.json"
TRANSPORTS = ("stdio", "sse", "streamable-http")
PATHS = {"sse": "/sse", "streamable-http": "/mcp"}
# A generous cap so `big_result` can exceed the worker's result limit without exhausting memory.
BIG_RESULT_MAX_BYTES = 64 * 1024 * 1024
# `crash` exit status: distinct from a clean exit and from the refused-token status.
CRASH_EXIT_STATUS = 70
REFUSED_EXIT_STATUS = 2
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


def key_digest(credential: str | None) -> str | None:
    """The first 16 hex digits of the SHA-256 of a credential (None when there is none)."""
    if not credential:
        return None
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


def load_projects(path: Path = DATA_FILE) -> list[dict[str, Any]]:
    """The demo projects as stored (work packages carry `due_offset_days`)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data["projects"])


def parse_week(week: str | None, today: date | None = None) -> tuple[str, date]:
    """`(label, monday)` for an ISO week like `2026-W47`; None means the current week.

    Raises:
        ValueError: the week is not of the form YYYY-Www or does not exist.
    """
    if week is None:
        year, number, _ = (today or date.today()).isocalendar()
    else:
        match = _WEEK.match(week.strip())
        if match is None:
            raise ValueError(f"week must look like 2026-W47, got {week!r}")
        year, number = int(match.group(1)), int(match.group(2))
    try:
        monday = date.fromisocalendar(year, number, 1)
    except ValueError:
        raise ValueError(f"week {week!r} does not exist") from None
    return f"{year}-W{number:02d}", monday


def weekly_report(projects: Sequence[Mapping[str, Any]], project_id: int, week: str | None) -> dict[str, Any]:
    """The report for one project and ISO week, with due dates resolved against that week.

    Raises:
        ValueError: unknown project or malformed week.
    """
    project = next((p for p in projects if p["id"] == project_id), None)
    if project is None:
        known = ", ".join(str(p["id"]) for p in projects)
        raise ValueError(f"unknown project_id {project_id}; known projects: {known}")
    label, monday = parse_week(week)
    week_end = monday + timedelta(days=6)
    packages = []
    for wp in project["work_packages"]:
        offset = wp.get("due_offset_days")
        due = None if offset is None else monday + timedelta(days=int(offset))
        packages.append(
            {
                "id": wp["id"],
                "subject": wp["subject"],
                "status": wp["status"],
                "assignee": wp.get("assignee"),
                "due_date": None if due is None else due.isoformat(),
                "priority": wp["priority"],
                "overdue": due is not None and due <= week_end and wp["status"] != "Completed",
            }
        )
    return {
        "project": {"id": project["id"], "name": project["name"]},
        "week": label,
        "work_packages": packages,
    }


def _header_credential(headers: Mapping[str, str] | None) -> str | None:
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    auth = lowered.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return lowered.get("x-api-key") or None


def build_server(transport: str, *, test_tools: bool = False) -> MCPServer:
    """An `MCPServer` with the demo tools (and the fault-injection tools when asked)."""
    server = MCPServer("mcp-worker-demo", instructions="OpenProject-like demo data for mcp-worker.")
    projects = load_projects()

    @server.tool()
    def fetch_weekly_report(project_id: int, week: str | None = None) -> dict[str, Any]:
        """Work packages of one project for an ISO week (default: this week), e.g. week='2026-W47'."""
        try:
            return weekly_report(projects, project_id, week)
        except ValueError as exc:
            raise ToolError(str(exc)) from None

    @server.tool()
    def list_projects() -> dict[str, Any]:
        """The projects this server knows, with their ids."""
        return {"projects": [{"id": p["id"], "name": p["name"]} for p in projects]}

    @server.tool(structured_output=False)
    def echo(message: str) -> str:
        """Return the message unchanged."""
        return message

    @server.tool()
    def whoami(ctx: Context) -> dict[str, Any]:
        """A digest of the credential this server received (never the credential) and its transport."""
        if transport == "stdio":
            credential = os.environ.get("MCP_SERVICE_API_KEY")
        else:
            credential = _header_credential(ctx.headers)
        return {
            "key_sha256": key_digest(credential),
            "transport": transport,
            "endpoint": os.environ.get("MCP_SERVICE_ENDPOINT") if transport == "stdio" else None,
            "pid": os.getpid(),
        }

    if test_tools:
        _add_test_tools(server)
    return server


def _add_test_tools(server: MCPServer) -> None:
    # How many `sleep` calls this server runs at once, the most it has run at once, and how many
    # the client cancelled (`notifications/cancelled`) while they slept.
    counts = {"in_flight": 0, "max": 0, "cancelled": 0}

    @server.tool(structured_output=False)
    async def sleep(seconds: float) -> str:
        """Sleep, then answer: for timeout, concurrency and cancellation tests (awaits: never
        blocks the server)."""
        counts["in_flight"] += 1
        counts["max"] = max(counts["max"], counts["in_flight"])
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            counts["cancelled"] += 1
            raise
        finally:
            counts["in_flight"] -= 1
        return f"slept {seconds}"

    @server.tool()
    def concurrency() -> dict[str, int]:
        """How many `sleep` calls run now, the most that ran at once, and how many were cancelled."""
        return dict(counts)

    @server.tool(structured_output=False)
    def fail(message: str) -> str:
        """Fail with the given message (an isError result)."""
        raise ToolError(message)

    @server.tool(structured_output=False)
    def big_result(size_bytes: int) -> str:
        """A text result of the given size."""
        if not 0 <= size_bytes <= BIG_RESULT_MAX_BYTES:
            raise ToolError(f"size_bytes must be between 0 and {BIG_RESULT_MAX_BYTES}")
        return "x" * size_bytes

    @server.tool(structured_output=False)
    def crash() -> str:
        """Kill the server process in the middle of the call."""
        sys.stderr.flush()
        os._exit(CRASH_EXIT_STATUS)

    @server.tool()
    def env_digest(name: str) -> dict[str, Any]:
        """The digest of an environment variable's value (None when unset)."""
        return {"name": name, "sha256": key_digest(os.environ.get(name))}

    _add_long_call_tools(server)


def _add_long_call_tools(server: MCPServer) -> None:
    """Tools for progress, input requests and outputSchema checks."""

    @server.tool(structured_output=False)
    async def count_up(ctx: Context, steps: int, every: float = 0.0) -> str:
        """Report progress `steps` times (1..steps of steps), `every` seconds apart, then answer."""
        for step in range(1, steps + 1):
            if every:
                await anyio.sleep(every)
            await ctx.report_progress(step, steps, f"step {step} of {steps}")
        return f"counted to {steps}"

    @server.tool(structured_output=False)
    def confirm_delete(ctx: Context, item: str) -> str | types.InputRequiredResult:
        """Delete `item` once the client confirms: the first call asks for input (2026-07-28
        `InputRequiredResult`); the retry carrying the answer completes."""
        answer = (ctx.input_responses or {}).get("confirm")
        if isinstance(answer, types.ElicitResult):
            confirmed = answer.action == "accept" and bool((answer.content or {}).get("confirm"))
            return f"deleted {item}" if confirmed else f"kept {item}"
        schema = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}
        ask = types.ElicitRequest(
            params=types.ElicitRequestFormParams(message=f"Delete {item}?", requested_schema=schema)
        )
        return types.InputRequiredResult(input_requests={"confirm": ask}, request_state=f"delete:{item}")

    @server.tool(structured_output=False)
    async def repeat_credential(ctx: Context) -> types.InputRequiredResult:
        """What a careless server does: repeat the credential it received in its progress and in
        an input request (the no-leak test checks the worker keeps neither)."""
        credential = _header_credential(ctx.headers) or os.environ.get("MCP_SERVICE_API_KEY") or ""
        await ctx.report_progress(1, 2, f"signed in as {credential}")
        schema = {"type": "object", "properties": {"go_on": {"type": "boolean"}}}
        ask = types.ElicitRequest(
            params=types.ElicitRequestFormParams(message=f"Go on as {credential}?", requested_schema=schema)
        )
        return types.InputRequiredResult(input_requests={"go_on": ask}, request_state="asked")

    @server.tool()
    def mismatched_output(count: int) -> dict[str, Any]:
        """Answer {"count": "<count as text>"}, though the outputSchema says an integer."""
        return {"count": str(count)}

    tool = server._tool_manager.get_tool("mismatched_output")
    assert tool is not None
    # A hand-set schema is published but not enforced by the server: the client sees the mismatch.
    tool.fn_metadata.output_schema = {
        "type": "object",
        "properties": {"count": {"type": "integer"}},
        "required": ["count"],
    }


class RequireToken:
    """ASGI middleware: 401 for any HTTP request without the token (Bearer or X-API-Key)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            given = _header_credential(headers) or ""
            if not hmac.compare_digest(given.encode(), self.token):
                body = b'{"error": "unauthorized: send Authorization: Bearer <token> or X-API-Key"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def _serve_http(server: MCPServer, transport: str, host: str, port: int, token: str | None) -> None:
    import uvicorn

    app = server.sse_app(host=host) if transport == "sse" else server.streamable_http_app(host=host)
    asgi: Any = RequireToken(app, token) if token else app
    # Binding here (not in uvicorn) lets port 0 pick a free port that we can then report. The socket
    # must say IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets, and without it every
    # response pays ~40 ms of Nagle plus delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    actual = sock.getsockname()[1]
    config = uvicorn.Config(asgi, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    userver = uvicorn.Server(config)
    _uvicorn_serving["on"] = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(userver.serve, [sock])
        while not userver.started:
            if userver.should_exit:
                return
            await anyio.sleep(0.01)
        shown = f"[{host}]" if ":" in host else host
        print(f"listening on http://{shown}:{actual}{PATHS[transport]}", file=sys.stderr, flush=True)


def run(
    transport: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    test_tools: bool = False,
) -> None:
    """Serve the demo tools over `stdio`, `sse` or `streamable-http` until interrupted.

    Raises:
        ValueError: unknown transport.
        SystemExit: (stdio) the token is set and MCP_SERVICE_API_KEY does not match it.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    token = token or os.environ.get("MCP_DEMO_TOKEN") or None
    test_tools = test_tools or os.environ.get("MCP_DEMO_TEST_TOOLS", "").lower() in ("1", "true", "yes")
    server = build_server(transport, test_tools=test_tools)
    if transport == "stdio":
        given = os.environ.get("MCP_SERVICE_API_KEY", "")
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            print("demo server: MCP_SERVICE_API_KEY does not match the server's token", file=sys.stderr)
            raise SystemExit(REFUSED_EXIT_STATUS)
        print("demo server: serving on stdio", file=sys.stderr, flush=True)
        anyio.run(server.run_stdio_async)
        return
    anyio.run(_serve_http, server, transport, host, port, token)


# Set while uvicorn serves: it stops gracefully on SIGTERM itself, then re-raises the signal to
# the handler it found, which must then let it return rather than interrupt the shutdown.
_uvicorn_serving = {"on": False}


def _interrupt(signum: int, frame: object) -> None:
    if not _uvicorn_serving["on"]:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m worker.demo.server --transport streamable-http --port 0`."""
    parser = argparse.ArgumentParser(prog="mcp-worker demo-server", description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=TRANSPORTS, default="streamable-http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed on stderr)")
    parser.add_argument("--token", default=None, help="require this credential (default: $MCP_DEMO_TOKEN)")
    parser.add_argument(
        "--test-tools", action="store_true", help="add sleep/concurrency/fail/big_result/crash/env_digest"
    )
    args = parser.parse_args(argv)
    # SIGTERM (`docker stop`) ends the server as ^C does: a clean exit 0. uvicorn shuts down
    # gracefully on it, then re-raises it to the handler found here.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        run(args.transport, host=args.host, port=args.port, token=args.token, test_tools=args.test_tools)


if __name__ == "__main__":
    main()
