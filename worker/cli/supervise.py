"""`mcp-worker worker -Q mcp.tools` on a machine with several cores: one threads-pool Celery worker
per core, run and watched by this process.

Tool calls wait on I/O, so one process holds many of them (the threads pool, MCP_TOOLS_CONCURRENCY
each), but the Python that runs around each call uses a core; MCP_TOOLS_PROCESSES processes (the
cores this process may use, by default) use them all. Each child is Celery's worker command
(`celery -A worker worker ...`, run by `worker.cli.worker_process`) with the same options and its
own node name, `<name>-<i>@<host>` (Flower and remote control see each; `mcp-worker health
--worker <name>@<host>` accepts them). SIGTERM, SIGINT and SIGQUIT are
passed to every child, so a stop is each child's warm (or cold) shutdown, and the supervisor exits
when they all have. A child that exits on its own stops the others and the supervisor exits with
its status: the container's restart policy (or systemd) then starts the whole set again, rather
than leaving a worker at part of its capacity. The children die with the supervisor (Linux's
parent-death signal), so a SIGKILLed supervisor leaves nothing behind.

`mcp-worker worker` decides on the pool and the count, then replaces itself with
`python -m worker.cli.supervise COUNT CELERY-ARGS...`: the process that stays imports no more than
this module (about 15 MiB instead of the CLI's 90), since it only starts, signals and waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING

from worker.processes import set_parent_death_signal

if TYPE_CHECKING:  # the supervisor process itself never imports the settings (see above)
    from worker.settings import Settings

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
POLL_S = 0.2


def default_processes() -> int:
    """The cores this process may run on (a container's cpuset included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def process_count(settings: Settings) -> int:
    """How many threads-pool processes the tools worker runs: MCP_TOOLS_PROCESSES, else one per core."""
    return settings.tools_processes or default_processes()


def node_names(given: str | None, count: int) -> list[str]:
    """`tools@%h` -> `tools-1@%h`, `tools-2@%h`...; Celery's default name without `-n`."""
    name, _, host = (given or "celery@%h").partition("@")
    return [f"{name}-{i}@{host or '%h'}" for i in range(1, count + 1)]


def without_name(argv: list[str]) -> tuple[list[str], str | None]:
    """`argv` without its `-n`/`--hostname` option, and that option's value."""
    rest: list[str] = []
    given = None
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in ("-n", "--hostname"):
            given = argv[i + 1] if i + 1 < len(argv) else None
            skip = True
        elif arg.startswith("--hostname="):
            given = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, given


def exec_supervisor(argv: list[str], count: int) -> int:
    """Replace this process with the light supervisor of `count` workers run with `argv`."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", __name__, str(count), *argv])  # noqa: S606
    return 1  # not reached


def supervise(argv: list[str], count: int) -> int:
    """Run Celery's worker command with `argv` `count` times, each with its own node name, until they
    stop; returns the exit status for this process."""
    rest, given = without_name(argv)
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "worker.cli.worker_process", *rest, "-n", name],
            start_new_session=True,  # a terminal's ^C reaches them once, through us
            preexec_fn=set_parent_death_signal if sys.platform == "linux" else None,
        )
        for name in node_names(given, count)
    ]
    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    first: subprocess.Popen[bytes] | None = None  # the child that ended on its own
    while any(child.poll() is None for child in children):
        ended = [c for c in children if c.returncode is not None]
        if ended and first is None and not stopping:
            first = ended[0]
            print(
                f"mcp-worker: worker process {first.pid} exited ({first.returncode}); stopping the others",
                file=sys.stderr,
            )
            forward(signal.SIGTERM, None)
        time.sleep(POLL_S)
    codes = [first.returncode] if first is not None else [c.returncode for c in children]
    status = next((code for code in codes if code), 0)
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(supervise(sys.argv[2:], int(sys.argv[1])))
