"""Retention: delete audit rows and reports older than `MCP_RETENTION_DAYS` (0 keeps everything).

Rows go in batches, each its own short transaction, so pruning a huge table never holds one giant
transaction (nor its locks) open. Reports go first: they reference executions (the foreign key
sets the link NULL, so the order is for tidiness, not correctness), and a report older than the
cut-off always points at an execution that is older still.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from worker.db.engine import session_scope
from worker.db.models import McpExecution, McpReport
from worker.settings import get_settings

logger = logging.getLogger(__name__)

# Rows per delete: big enough to prune millions of rows in minutes, small enough that one batch's
# transaction holds its locks for well under a second.
BATCH_SIZE = 1000
# A bound on the batches of one run, so a daily run always ends; the next run goes on from there.
MAX_BATCHES = 10_000


def _prune_table(model: type[McpExecution] | type[McpReport], cutoff: datetime, batch_size: int) -> int:
    deleted = 0
    for _ in range(MAX_BATCHES):
        batch = sa.select(model.id).where(model.created_at < cutoff).order_by(model.id).limit(batch_size)
        with session_scope() as session:
            count = session.execute(sa.delete(model).where(model.id.in_(batch))).rowcount  # type: ignore[attr-defined]
        deleted += count
        if count < batch_size:
            break
    return deleted


def prune(
    now: datetime | None = None, days: int | None = None, batch_size: int = BATCH_SIZE
) -> dict[str, int]:
    """Delete `mcp_reports` and `mcp_executions` rows created more than `days` days before `now`.

    `days` defaults to `MCP_RETENTION_DAYS`; 0 keeps everything. Returns the count deleted per
    table.

    Raises:
        ValueError: `days` is negative or `batch_size` is not positive.
    """
    days = get_settings().retention_days if days is None else days
    if days < 0:
        raise ValueError(f"retention days must be 0 or more, got {days}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    counts = {"mcp_reports": 0, "mcp_executions": 0}
    if days == 0:
        return counts
    # In UTC: SQLite compares the stored timestamps as text.
    cutoff = (now or datetime.now(UTC)).astimezone(UTC) - timedelta(days=days)
    counts["mcp_reports"] = _prune_table(McpReport, cutoff, batch_size)
    counts["mcp_executions"] = _prune_table(McpExecution, cutoff, batch_size)
    logger.info(
        "pruned %d report(s) and %d execution(s) created before %s",
        counts["mcp_reports"],
        counts["mcp_executions"],
        cutoff.isoformat(),
    )
    return counts
