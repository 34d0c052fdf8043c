"""Execution leases, kept alive while their call runs.

A claim takes a short lease on its row (`MCP_LEASE_SECONDS`, 30 s by default). While this process
runs the call, one daemon thread renews every lease the process holds, every third of the lease
time, in one UPDATE for all of them. A process that dies or stops stops renewing, so its leases
run out within one lease time and a redelivery of the task claims the row; a holder that comes
back afterwards finds its lease taken and records nothing (see `audit.succeed`, `audit.fail`).

The thread is per process and created on first use after a fork, like the engine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from worker.db.engine import autocommit
from worker.db.models import McpExecution
from worker.execution.audit import Status

logger = logging.getLogger(__name__)

# Renewals per lease time: two may be missed (a slow database) before the lease runs out.
RENEWALS_PER_LEASE = 3
# Leases renewed by one statement at most (the statement's size stays bounded).
RENEW_BATCH = 500

_table = cast(sa.Table, McpExecution.__table__)


def _rowcount(statement: Any) -> int:
    result: Any = autocommit(lambda connection: connection.execute(statement))
    return int(result.rowcount or 0)


def renew(pairs: list[tuple[str, str]], lease_seconds: float, now: datetime | None = None) -> int:
    """Push the leases of `(task_id, owner)` pairs `lease_seconds` past now, where the owner still
    holds a running row; returns how many were renewed."""
    expires = (now or datetime.now(UTC)) + timedelta(seconds=lease_seconds)
    renewed = 0
    for start in range(0, len(pairs), RENEW_BATCH):
        batch = pairs[start : start + RENEW_BATCH]
        statement = (
            sa.update(_table)
            .where(
                _table.c.status == Status.RUNNING.value,
                sa.tuple_(_table.c.task_id, _table.c.lease_owner).in_(batch),
            )
            .values(lease_expires_at=expires)
        )
        renewed += _rowcount(statement)
    return renewed


def release_lost(task_id: str) -> bool:
    """Free the lease of `task_id`'s running row at once, its holder being known dead (the
    worker's main process saw the pool process die); returns whether there was one. The
    redelivery then claims the row without waiting for the lease to run out."""
    statement = (
        sa.update(_table)
        .where(_table.c.task_id == task_id, _table.c.status == Status.RUNNING.value)
        .values(lease_expires_at=None)
    )
    return bool(_rowcount(statement))


class LeaseKeeper:
    """The leases one process holds, and the thread that renews them."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mcp-worker-leases", daemon=True)
        self._thread.start()

    def hold(self, task_id: str, owner: str) -> None:
        with self._lock:
            self._held[task_id] = owner

    def release(self, task_id: str) -> None:
        with self._lock:
            self._held.pop(task_id, None)

    def held(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._held.items())

    def _run(self) -> None:
        interval = self.lease_seconds / RENEWALS_PER_LEASE
        while not self._wake.wait(interval):
            pairs = self.held()
            if not pairs:
                continue
            try:
                renewed = renew(pairs, self.lease_seconds)
            except DBAPIError as exc:
                # The next round tries again; leases that run out meanwhile let a redelivery in.
                logger.warning("could not renew %d execution leases: %s", len(pairs), type(exc.orig).__name__)
                continue
            except Exception:
                logger.exception("renewing %d execution leases failed", len(pairs))
                continue
            if renewed < len(pairs):
                logger.debug("renewed %d of %d execution leases (the rest finished)", renewed, len(pairs))


_keepers: dict[tuple[int, float], LeaseKeeper] = {}
_keepers_lock = threading.Lock()


def keeper(lease_seconds: float) -> LeaseKeeper:
    """This process's keeper for leases of `lease_seconds` (a new one after a fork)."""
    key = (os.getpid(), lease_seconds)
    found = _keepers.get(key)
    if found is None:
        with _keepers_lock:
            found = _keepers.get(key)
            if found is None:
                found = _keepers[key] = LeaseKeeper(lease_seconds)
    return found


@contextmanager
def kept(task_id: str, owner: str, lease_seconds: float) -> Iterator[None]:
    """Keep the lease of `task_id` (claimed by `owner`) alive for the duration of the block."""
    holder = keeper(lease_seconds)
    holder.hold(task_id, owner)
    try:
        yield
    finally:
        holder.release(task_id)
