"""A lease on each execution row, so a second delivery of a running task does not call the tool
again: the copy that claims the row holds it until `lease_expires_at`; another copy waits for its
outcome, and takes over only once the lease has run out (the holder died).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mcp_executions") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(64)))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True)))
    op.create_index("idx_mcp_executions_status_started", "mcp_executions", ["status", "started_at"])


def downgrade() -> None:
    op.drop_index("idx_mcp_executions_status_started", table_name="mcp_executions")
    with op.batch_alter_table("mcp_executions") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
