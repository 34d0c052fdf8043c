"""mcp_report_schedules: per-user report schedules (cron, time zone, failures), and the link
from mcp_reports to the schedule that produced it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "mcp_report_schedules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.String(50), nullable=False),
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("template", sa.String(100)),
        sa.Column("cron", sa.String(100), nullable=False, server_default=sa.text("'0 8 * * 1'")),
        sa.Column("timezone", sa.String(64), nullable=False, server_default=sa.text("'UTC'")),
        sa.Column("refine", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("last_slot", sa.DateTime(timezone=True)),
        sa.Column("next_run_at", sa.DateTime(timezone=True)),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW),
    )
    op.create_index("idx_mcp_report_schedules_due", "mcp_report_schedules", ["enabled", "next_run_at"])
    op.create_index("idx_mcp_report_schedules_user_id", "mcp_report_schedules", ["user_id"])
    with op.batch_alter_table("mcp_reports") as batch:
        batch.create_foreign_key(
            "fk_mcp_reports_schedule", "mcp_report_schedules", ["schedule_id"], ["id"], ondelete="SET NULL"
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER update_mcp_report_schedules_updated_at BEFORE UPDATE ON mcp_report_schedules "
            "FOR EACH ROW EXECUTE FUNCTION update_updated_at_column()"
        )
    else:
        op.execute(
            "CREATE TRIGGER update_mcp_report_schedules_updated_at AFTER UPDATE ON mcp_report_schedules "
            "FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at BEGIN "
            "UPDATE mcp_report_schedules SET updated_at = CURRENT_TIMESTAMP WHERE id = NEW.id; END"
        )


def downgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    op.execute(
        "DROP TRIGGER IF EXISTS update_mcp_report_schedules_updated_at"
        + (" ON mcp_report_schedules" if is_pg else "")
    )
    with op.batch_alter_table("mcp_reports") as batch:
        batch.drop_constraint("fk_mcp_reports_schedule", type_="foreignkey")
    op.drop_index("idx_mcp_report_schedules_user_id", table_name="mcp_report_schedules")
    op.drop_index("idx_mcp_report_schedules_due", table_name="mcp_report_schedules")
    op.drop_table("mcp_report_schedules")
