"""Worker process lifecycle: close MCP sessions and the database engine on shutdown."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from worker import mcp
from worker.db.engine import dispose_engine

logger = logging.getLogger(__name__)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_resources(**_: Any) -> None:
    # Every pooled session is closed by its owner task and every stdio child is reaped, so a
    # warm shutdown leaves no server processes behind.
    try:
        mcp.shutdown_runtime()
    finally:
        dispose_engine()


@worker_ready.connect
def _warn_about_configuration(**_: Any) -> None:
    from worker.services.crypto import warn_if_unencrypted
    from worker.settings import get_settings

    warn_if_unencrypted(get_settings().secret_key)
