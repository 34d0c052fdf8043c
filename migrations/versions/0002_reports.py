"""mcp_reports: rendered weekly reports, their raw render, refinement and data execution.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "mcp_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(50), nullable=False),
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("period", sa.String(10), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("raw_content", sa.Text(), nullable=False),
        sa.Column("refined", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("refine_model", sa.String(100)),
        sa.Column("refine_error", sa.Text()),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("completion_tokens", sa.Integer()),
        sa.Column("total_tokens", sa.Integer()),
        sa.Column("undefined_names", JSONType),
        sa.Column(
            "execution_id",
            sa.Integer(),
            sa.ForeignKey("mcp_executions.id", ondelete="SET NULL", name="fk_mcp_reports_execution"),
        ),
        sa.Column("schedule_id", sa.Integer()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.UniqueConstraint("schedule_id", "period", name="uq_mcp_reports_schedule_period"),
    )
    op.create_index("idx_mcp_reports_user_created", "mcp_reports", ["user_id", "created_at"])
    op.create_index("idx_mcp_reports_service_period", "mcp_reports", ["service", "period"])
    op.create_index("idx_mcp_reports_task_id", "mcp_reports", ["task_id"], unique=True)


def downgrade() -> None:
    op.drop_index("idx_mcp_reports_task_id", table_name="mcp_reports")
    op.drop_index("idx_mcp_reports_service_period", table_name="mcp_reports")
    op.drop_index("idx_mcp_reports_user_created", table_name="mcp_reports")
    op.drop_table("mcp_reports")
