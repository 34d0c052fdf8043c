"""`mcp-worker demo`, `mcp-worker worker` and `mcp-worker beat`.

`worker` and `beat` are `celery -A worker worker|beat` with the project's defaults (every queue;
on the tools queue alone, the threads pool with MCP_TOOLS_CONCURRENCY calls in flight, one such
process per core under `worker.cli.supervise`; the beat schedule file in the data folder); extra
arguments go to Celery unchanged. A worker runs Celery's worker command through
`worker.cli.worker_process`, which leaves out the rest of Celery's command line. On the embedded
default they migrate the SQLite database first.
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


def _exec_python(*argv: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(sys.executable, [sys.executable, *argv])  # noqa: S606
    return 1  # not reached


def _option(argv: list[str], *names: str) -> str | None:
    """The value given to an option of Celery's command line (`-Q x`, `--queues=x`, `-Qx`), or
    None when it is not given."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[i + 1] if i + 1 < len(argv) else ""
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                return arg[len(name) :]
    return None


def tools_pool_defaults(argv: list[str], concurrency: int) -> list[str]:
    """The options a worker on the tools queue alone gets unless it sets them: the threads pool
    (tool calls wait on I/O, so one process keeps `concurrency` of them in flight) and a prefetch
    of one message per thread. Other queues keep Celery's prefork pool."""
    defaults: list[str] = []
    if _option(argv, "-P", "--pool") is None:
        defaults += ["-P", "threads"]
        if _option(argv, "-c", "--concurrency") is None:
            defaults += ["-c", str(concurrency)]
        if _option(argv, "--prefetch-multiplier") is None:
            defaults += ["--prefetch-multiplier", "1"]
    return defaults


def _worker(args: argparse.Namespace) -> int:
    from worker import names

    extra = list(args.rest)
    if "--help" not in extra and "-h" not in extra:
        _announce_backends()
    queues = _option(extra, "-Q", "--queues")
    if queues is None:
        extra = ["-Q", ALL_QUEUES, *extra]
    elif queues == names.TOOLS_QUEUE:
        from worker.cli.supervise import exec_supervisor, process_count
        from worker.settings import get_settings

        settings = get_settings()
        defaults = tools_pool_defaults(extra, settings.tools_concurrency)
        extra += defaults
        processes = process_count(settings)
        # Only with the production pool (no -P given) does it run one process per core.
        if defaults and processes > 1 and "--help" not in extra and "-h" not in extra:
            return exec_supervisor(["--loglevel", "INFO", *extra], processes)
    return _exec_python("-m", "worker.cli.worker_process", "--loglevel", "INFO", *extra)


def _beat(args: argparse.Namespace) -> int:
    if "--help" not in args.rest and "-h" not in args.rest:
        _announce_backends()
    return _exec_python("-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO", *args.rest)
