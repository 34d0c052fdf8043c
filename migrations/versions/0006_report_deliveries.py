"""Report deliveries (issue 17): where a schedule's reports go (`mcp_report_schedules.channels`)
and the delivery log, one row per report and channel (`mcp_report_deliveries`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    with op.batch_alter_table("mcp_report_schedules") as batch:
        batch.add_column(sa.Column("channels", JSON, nullable=True))
    op.create_table(
        "mcp_report_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "report_id",
            sa.Integer(),
            sa.ForeignKey("mcp_reports.id", ondelete="CASCADE", name="fk_mcp_report_deliveries_report"),
            nullable=False,
        ),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("channel_key", sa.String(80), nullable=False),
        sa.Column("target", sa.String(500), nullable=False),
        sa.Column("config", JSON, server_default=sa.text("'{}'")),
        sa.Column("status", sa.String(20), nullable=False, server_default=sa.text("'pending'")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text()),
        sa.Column("response_code", sa.Integer()),
        sa.Column("message_id", sa.String(255)),
        sa.Column("claimed_by", sa.String(255)),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.UniqueConstraint("report_id", "channel_key", name="uq_mcp_report_deliveries_report_channel"),
    )
    op.create_index("idx_mcp_report_deliveries_status", "mcp_report_deliveries", ["status"])


def downgrade() -> None:
    op.drop_index("idx_mcp_report_deliveries_status", table_name="mcp_report_deliveries")
    op.drop_table("mcp_report_deliveries")
    with op.batch_alter_table("mcp_report_schedules") as batch:
        batch.drop_column("channels")
