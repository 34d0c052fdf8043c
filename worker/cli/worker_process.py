"""`python -m worker.cli.worker_process ARGS...`: Celery's own `worker` command, the one
`celery -A worker worker ARGS...` runs, without Celery's umbrella command around it.

The umbrella (`celery.bin.celery`) imports every other subcommand, click-repl with prompt_toolkit
for `celery shell`, and the subcommands installed plugins register (Flower's: Tornado, Prometheus'
client, Pygments): about 11 MiB in each worker process that a worker never runs. `mcp-worker
worker` starts this instead, for every queue and in each process of the tools worker. It takes the
worker options `celery worker` takes (`--help` lists them), reads the same `CELERY_WORKER_*`
environment variables, and starts the same `app.Worker`; what the umbrella's global options do
(`-A`, `--broker`, `--config`, `--workdir`) is fixed here: the app is `worker.celery.app`, configured
by `celeryconfig` and the environment.
"""

from __future__ import annotations

import os
import sys

from celery.app.utils import find_app
from celery.bin.base import CLIContext
from celery.bin.worker import worker as worker_command

APP = "worker"  # what `celery -A worker` is given
PROG = "celery worker"


def main(argv: list[str]) -> None:
    """Run Celery's worker command with `argv` (the options after `celery -A worker worker`);
    Click exits the process with the command's status, as `celery` does."""
    app = find_app(APP)
    # What the umbrella adds to its worker command: options an app or a plugin declares.
    worker_command.params.extend(app.user_options.get("worker", ()))
    worker_command.params.extend(app.user_options.get("preload", ()))
    # `celery -C` is NO_COLOR in the environment here.
    no_color = os.environ.get("NO_COLOR", "").lower() not in ("", "0", "false", "no")
    context = CLIContext(app=app, no_color=no_color, workdir=None, quiet=False)
    worker_command.main(args=argv, prog_name=PROG, obj=context, auto_envvar_prefix="CELERY_WORKER")


if __name__ == "__main__":
    main(sys.argv[1:])
