"""`mcp-worker`: the operator's command line.

Each subcommand group lives in its own module with a `register(subparsers)` function; handlers
return an exit code. Worker errors print one line on stderr and exit 1; nothing prints a secret.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.errors import WorkerError

COMMAND_MODULES = (
    "db",
    "services",
    "calls",
    "executions",
    "reports",
    "schedules",
    "health",
    "run",
    "servers",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="mcp-worker", description="Call MCP tools for many users, reliably."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"worker.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from worker.ops.logs import configure_logging

    configure_logging(level="DEBUG" if args.verbose else "WARNING")
    try:
        return int(args.handler(args) or 0)
    except WorkerError as exc:
        from worker.redaction import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
