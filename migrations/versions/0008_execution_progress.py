"""Execution progress, cancellation and MCP tasks (issue 16): the server's latest progress on the
row, whether the result matched the tool's `outputSchema` (and why not), and, for a call run as
an MCP task, the server's task id and the (redacted) input request it is waiting on. The new
statuses (`cancelled`, `input_required`) need no schema change: `status` is a plain string.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("mcp_executions") as batch:
        batch.add_column(sa.Column("progress", sa.Float()))
        batch.add_column(sa.Column("progress_total", sa.Float()))
        batch.add_column(sa.Column("progress_message", sa.String(500)))
        batch.add_column(sa.Column("output_valid", sa.Boolean()))
        batch.add_column(sa.Column("output_error", sa.Text()))
        batch.add_column(sa.Column("server_task_id", sa.String(255)))
        batch.add_column(sa.Column("input_request", JSONType))


def downgrade() -> None:
    with op.batch_alter_table("mcp_executions") as batch:
        batch.drop_column("input_request")
        batch.drop_column("server_task_id")
        batch.drop_column("output_error")
        batch.drop_column("output_valid")
        batch.drop_column("progress_message")
        batch.drop_column("progress_total")
        batch.drop_column("progress")
