"""`mcp-worker health`: is the database, the broker, a worker (and each MCP service) answering?

Fit for a container health check: every check is bounded by `--timeout`, the output is a table
(or JSON) of one-line details with no secrets, and the exit code is 1 when anything is down.
"""

from __future__ import annotations

import argparse
import sys

from worker.cli.output import print_json, print_table
from worker.errors import InvalidArguments
from worker.ops.health import DEFAULT_TIMEOUT_S, healthy, run_checks


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = sub.add_parser(
        "health", help="check the database, broker, workers (and services); exit 1 when one is down"
    )
    health.add_argument(
        "--services", action="store_true", help="also connect to every configured MCP service"
    )
    health.add_argument("--json", action="store_true", help="print JSON instead of a table")
    health.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds each check may take (default {DEFAULT_TIMEOUT_S:g})",
    )
    health.add_argument(
        "--worker",
        dest="workers",
        action="append",
        default=[],
        metavar="NAME",
        help="require this worker (e.g. tools@$(hostname)) to answer, not just any; repeatable",
    )
    health.add_argument(
        "--fix-stuck",
        action="store_true",
        help="mark executions whose worker is gone (lease long expired, or a lost retry) as error",
    )
    health.set_defaults(handler=_health)


def _health(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise InvalidArguments("--timeout must be a positive number of seconds")
    checks = run_checks(
        services=args.services, fix_stuck=args.fix_stuck, workers=args.workers, timeout=args.timeout
    )
    ok = healthy(checks)
    if args.json:
        print_json({"healthy": ok, "checks": [c.as_dict() for c in checks]})
    else:
        print_table(("component", "status", "detail"), [(c.component, c.status, c.detail) for c in checks])
    if not ok:
        down = ", ".join(c.component for c in checks if c.status == "down")
        print(f"unhealthy: {down}", file=sys.stderr)
        return 1
    return 0
