"""What the thread running one call does while it waits (`worker.mcp.Watch`, run by
`worker.mcp.loop.run_sync`'s tick): pass on the server's progress, throttled, to the Celery task
state and the row, and stop the call when it was cancelled (`worker.execution.cancel`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from worker.db.engine import autocommit
from worker.execution import cancel, pauses
from worker.mcp import Progress
from worker.settings import Settings

logger = logging.getLogger(__name__)

# While a call runs, its thread looks for a cancellation and passes on the server's progress this
# often: so at most one progress write (Celery state and row) per call per interval, plus the
# final one, however chatty the server, and a cancellation reaches the server within it.
WATCH_INTERVAL_S = 0.5

# Reports a call's progress to whoever waits for it (the Celery task state).
ProgressReporter = Callable[[Progress], None]


class CallWatch:
    """What the thread running one call does while it waits (`worker.mcp.Watch`): pass on the
    server's latest progress, throttled to one write per `WATCH_INTERVAL_S`, and stop the call
    when it was cancelled."""

    interval = WATCH_INTERVAL_S

    def __init__(self, task_id: str, owner: str, settings: Settings, report: ProgressReporter | None) -> None:
        self.task_id = task_id
        self.owner = owner
        self.settings = settings
        self.report = report
        self.latest: Progress | None = None
        self.written: Progress | None = None

    def progress(self, update: Progress) -> None:
        self.latest = update  # the loop thread: one reference assignment, never a write

    def tick(self) -> bool:
        self.flush(final=False)
        return cancel.requested(self.task_id, self.settings)

    def flush(self, *, final: bool) -> None:
        """Write the latest progress if it is new: to the Celery state while the call runs, and
        to the row (at the end, only the row: the task's own result follows at once)."""
        update = self.latest
        if update is None or update == self.written:
            return
        self.written = update
        try:
            if self.report is not None and not final:
                self.report(update)
            autocommit(
                lambda connection: pauses.set_progress(
                    connection,
                    self.task_id,
                    owner=self.owner,
                    progress=update.progress,
                    total=update.total,
                    message=update.message,
                )
            )
        except Exception as exc:
            # Progress is a courtesy: the call goes on, and the next update tries again.
            logger.warning("could not record the progress of task %s: %s", self.task_id, type(exc).__name__)
