"""Servers for the fault tests, run as their own processes:

    python tests/faults/fake_servers.py counting --port P --log FILE   an MCP server (streamable HTTP)
    python tests/faults/fake_servers.py garbage-http --port P           HTTP that answers non-JSON-RPC text
    python tests/faults/fake_servers.py garbage-stdio                   a "stdio server" printing garbage

The counting server's `record(tag, seconds)` tool appends `start <tag> <calls in flight>` to FILE
when a call begins and `end <tag>` when it returns, so a test can count how often the tool ran for
each task and how many calls the server saw at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GARBAGE = b"hello, I am not JSON-RPC\n"


def _note(log: Path, line: str) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def serve_counting(port: int, log: Path) -> None:
    import anyio
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("faults-counting")
    in_flight = [0]

    @server.tool(structured_output=False)
    async def record(tag: str, seconds: float = 0.0) -> str:
        """Note the call, sleep `seconds`, answer `tag`."""
        in_flight[0] += 1
        _note(log, f"start {tag} {in_flight[0]}")
        try:
            await anyio.sleep(seconds)
        finally:
            in_flight[0] -= 1
        _note(log, f"end {tag}")
        return tag

    app = server.streamable_http_app(host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2)


class _Garbage(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(GARBAGE)))
        self.end_headers()
        self.wfile.write(GARBAGE)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"garbage-http: {format % args}\n")


def serve_garbage_http(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), _Garbage).serve_forever()


def garbage_stdio() -> None:
    # Answers every line on stdin with noise, like a program that is not an MCP server.
    for line in sys.stdin:
        sys.stdout.write(f"garbage in reply to {len(line)} bytes\n")
        sys.stdout.flush()
    time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["counting", "garbage-http", "garbage-stdio"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    if args.mode == "counting":
        serve_counting(args.port, args.log)
    elif args.mode == "garbage-http":
        serve_garbage_http(args.port)
    else:
        garbage_stdio()


if __name__ == "__main__":
    main()
