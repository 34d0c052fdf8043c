"""A minimal MCP server over streamable HTTP (JSON responses) whose tasks outlive any session,
as a server that binds tasks to its caller's credential (not to a connection) keeps them.

    python tests/progress/task_server.py --port N --task-seconds 6 --poll-ms 2000

Tools: `slow_report` (taskSupport "required"; a task that completes `--task-seconds` after it
starts) and `task_starts` (how many `slow_report` tasks were started, their ids, and the ids
cancelled). It speaks only what the tests need: initialize, tools/list, tools/call (with `task`),
tasks/get, tasks/result, tasks/cancel; `server/discover` is refused so the client falls back to
`initialize`.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PROTOCOL = "2025-11-25"
TOOLS = [
    {
        "name": "slow_report",
        "description": "A report that takes a while: runs as a task.",
        "inputSchema": {"type": "object", "properties": {"topic": {"type": "string"}}},
        "execution": {"taskSupport": "required"},
    },
    {
        "name": "task_starts",
        "description": "How many slow_report tasks were started.",
        "inputSchema": {"type": "object", "properties": {}},
    },
]


class Tasks:
    def __init__(self, seconds: float, poll_ms: int) -> None:
        self.seconds = seconds
        self.poll_ms = poll_ms
        self.started: dict[str, tuple[float, str, str]] = {}  # id -> (monotonic start, created, topic)
        self.cancelled: set[str] = set()

    def start(self, topic: str) -> dict[str, Any]:
        task_id = uuid.uuid4().hex
        self.started[task_id] = (time.monotonic(), datetime.now(UTC).isoformat(), topic)
        return self.describe(task_id)

    def describe(self, task_id: str) -> dict[str, Any]:
        began, created, _ = self.started[task_id]
        done = time.monotonic() - began >= self.seconds
        status = "cancelled" if task_id in self.cancelled else "completed" if done else "working"
        return {
            "taskId": task_id,
            "status": status,
            "statusMessage": "done" if done else "writing the report",
            "createdAt": created,
            "lastUpdatedAt": datetime.now(UTC).isoformat(),
            "ttl": 3_600_000,
            "pollInterval": self.poll_ms,
        }


def _error(request_id: Any, code: int, message: str) -> JSONResponse:
    return JSONResponse({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def build(tasks: Tasks) -> Starlette:
    def answer(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if method == "initialize":
            return {
                "protocolVersion": PROTOCOL,
                "capabilities": {"tools": {}, "tasks": {"requests": {"tools": {"call": {}}}}},
                "serverInfo": {"name": "task-server", "version": "1"},
            }
        if method == "ping":
            return {}
        if method == "tools/list":
            return {"tools": TOOLS}
        if method == "tools/call" and params.get("name") == "slow_report" and "task" in params:
            return {"task": tasks.start(str((params.get("arguments") or {}).get("topic", "")))}
        if method == "tools/call" and params.get("name") == "task_starts":
            return {
                **_text(str(len(tasks.started))),
                "structuredContent": {
                    "starts": len(tasks.started),
                    "ids": sorted(tasks.started),
                    "cancelled": sorted(tasks.cancelled),
                },
            }
        if method == "tasks/get" and params.get("taskId") in tasks.started:
            return tasks.describe(params["taskId"])
        if method == "tasks/cancel" and params.get("taskId") in tasks.started:
            tasks.cancelled.add(params["taskId"])
            return tasks.describe(params["taskId"])
        if method == "tasks/result" and params.get("taskId") in tasks.started:
            _, _, topic = tasks.started[params["taskId"]]
            return _text(f"report on {topic}")
        return None

    async def mcp(request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405)
        message = await request.json()
        method, request_id = message.get("method", ""), message.get("id")
        if request_id is None:  # a notification
            return Response(status_code=202)
        result = answer(method, message.get("params") or {})
        if result is None:
            return _error(request_id, -32601 if "task" not in method else -32602, f"not supported: {method}")
        return JSONResponse({"jsonrpc": "2.0", "id": request_id, "result": result})

    return Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST", "DELETE"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--task-seconds", type=float, default=6.0)
    parser.add_argument("--poll-ms", type=int, default=2000)
    args = parser.parse_args()
    print(f"listening on http://127.0.0.1:{args.port}/mcp", flush=True)
    uvicorn.run(
        build(Tasks(args.task_seconds, args.poll_ms)), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
