"""The task request of `mcp.deliver_report`: a pool process that dies while sending frees its
claim from the worker's main process, so the redelivered message sends at once instead of
waiting for the claim's lease to run out."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import WorkerLostError
from celery.worker.request import Request

from worker.delivery import log

logger = logging.getLogger(__name__)


class ClaimFreeingRequest(Request):
    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # ExceptionWithTraceback
        # Billiard reports a killed child as WorkerLostError, or as its exit (SystemExit).
        if isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt):
            try:
                if log.release_lost(self.id):
                    logger.info("task %s lost its pool process; its delivery claim is freed", self.id)
            except Exception:
                logger.exception("could not free the delivery claim of task %s; its lease runs out", self.id)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
