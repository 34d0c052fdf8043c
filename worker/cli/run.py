"""`mcp-worker demo`, `mcp-worker worker` and `mcp-worker beat`.

`worker` and `beat` are `celery -A worker worker|beat` with the project's defaults (every queue,
the beat schedule file in the data folder); extra arguments go to Celery unchanged. On the
embedded default they migrate the SQLite database first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger(__name__)

ALL_QUEUES = "mcp.tools,mcp.reports,mcp.schedule"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="run the whole flow on the embedded default (no Postgres, no Redis)")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the worker, beat and demo servers running"
    )
    demo.set_defaults(handler=_demo)

    # Their arguments go to Celery as they are (see `worker.cli.PASSTHROUGH`); `--help` is Celery's.
    worker = sub.add_parser(
        "worker", help="start a Celery worker (celery -A worker worker ...)", add_help=False
    )
    worker.set_defaults(handler=_worker)
    beat = sub.add_parser("beat", help="start Celery beat (celery -A worker beat ...)", add_help=False)
    beat.set_defaults(handler=_beat)


def _demo(args: argparse.Namespace) -> int:
    from worker.demo.flow import run_demo

    return run_demo(keep_running=args.keep_running)


def _announce_backends() -> None:
    from worker.db import schema
    from worker.settings import get_settings

    settings = get_settings()
    db = (
        "SQLite in " + str(settings.data_dir)
        if settings.database_is_embedded
        else "the DATABASE_URL database"
    )
    broker = (
        "the file transport in " + str(settings.data_dir)
        if settings.broker_is_embedded
        else "CELERY_BROKER_URL"
    )
    print(f"mcp-worker: database: {db}; broker: {broker}", file=sys.stderr)
    schema.ensure_schema()


def _exec_celery(argv: list[str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", "worker", *argv])  # noqa: S606


def _worker(args: argparse.Namespace) -> int:
    extra = list(args.rest)
    if "--help" not in extra and "-h" not in extra:
        _announce_backends()
    if not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in extra):
        extra = ["-Q", ALL_QUEUES, *extra]
    return _exec_celery(["worker", "--loglevel", "INFO", *extra])


def _beat(args: argparse.Namespace) -> int:
    if "--help" not in args.rest and "-h" not in args.rest:
        _announce_backends()
    return _exec_celery(["beat", "--loglevel", "INFO", *args.rest])
