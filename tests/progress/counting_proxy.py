"""A streaming HTTP proxy in front of one MCP server that counts what reaches it:

    python tests/progress/counting_proxy.py --port N --upstream http://127.0.0.1:M/mcp

Every request to /mcp (POST, GET event streams, DELETE) is passed on, its body and its response
streamed unchanged. GET /counts answers how many `tools/call` requests that start an MCP task
(`params.task`), how many `initialize` requests and how many `DELETE`s (a session ended) went
through: what a test needs to show that a server's task was started once, or that a session
was kept, whatever the workers in front did.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# The headers that carry MCP's state both ways; hop-by-hop ones (content-length, connection) are
# the proxy's own business.
REQUEST_HEADERS = ("accept", "content-type", "authorization", "mcp-session-id", "mcp-protocol-version")
RESPONSE_HEADERS = ("content-type", "mcp-session-id", "cache-control")


def _messages(body: bytes) -> list[dict[str, Any]]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    return [item for item in items if isinstance(item, dict)]


def build(upstream: str) -> Starlette:
    counts: Counter[str] = Counter()
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=None))

    async def forward(request: Request) -> Response:
        body = await request.body()
        if request.method == "DELETE":
            counts["deletes"] += 1
        for message in _messages(body):
            params = message.get("params") or {}
            if message.get("method") == "tools/call" and isinstance(params, dict) and "task" in params:
                counts["task_calls"] += 1
            if message.get("method") == "initialize":
                counts["initializes"] += 1
        headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
        if "last-event-id" in request.headers:
            headers["last-event-id"] = request.headers["last-event-id"]
        sent = http.build_request(request.method, upstream, headers=headers, content=body or None)
        answer = await http.send(sent, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            async for chunk in answer.aiter_raw():
                yield chunk

        kept = {name: answer.headers[name] for name in RESPONSE_HEADERS if name in answer.headers}
        return StreamingResponse(
            relay(), status_code=answer.status_code, headers=kept, background=BackgroundTask(answer.aclose)
        )

    async def report(_: Request) -> JSONResponse:
        return JSONResponse({name: counts[name] for name in ("task_calls", "initializes", "deletes")})

    return Starlette(
        routes=[
            Route("/mcp", forward, methods=["GET", "POST", "DELETE"]),
            Route("/counts", report, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    print(f"proxying http://127.0.0.1:{args.port}/mcp to {args.upstream}", flush=True)
    uvicorn.run(build(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
