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
    parser.add_argument("--version", action="version", version=f"mcp-worker {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"worker.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcp-worker")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


# Commands whose arguments belong to another program (Celery, the demo server): everything after
# the command's name goes to it untouched, options and `--help` included. argparse's REMAINDER
# cannot do that for a subcommand whose first argument is an option.
PASSTHROUGH = frozenset({"worker", "beat", "demo-server"})


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    words = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, word in enumerate(words) if not word.startswith("-")), None)
    if at is None or words[at] not in PASSTHROUGH:
        return parser.parse_args(words)
    args = parser.parse_args(words[: at + 1])
    args.rest = words[at + 1 :]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
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
