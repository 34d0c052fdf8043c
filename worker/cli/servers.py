"""`mcp-worker demo-server`: the bundled OpenProject-like MCP server."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo-server",
        help="run the bundled demo MCP server (stdio, sse or streamable-http)",
        add_help=False,
    )
    # Its arguments go to the demo server as they are (see `worker.cli.PASSTHROUGH`).
    demo.set_defaults(handler=_demo_server)


def _demo_server(args: argparse.Namespace) -> int:
    from worker.demo import server

    server.main(args.rest)
    return 0
