"""The seed's schema: mcp_services, mcp_executions, mcp_templates.

Every column, default and index name of the seed document, with `desc` quoted (SQLAlchemy quotes
reserved words itself; the seed's raw DDL fails on Postgres). `mcp_executions` also gets the
columns the worker needs to key rows by Celery task id across attempts. `updated_at` is kept
current by a trigger on Postgres (the seed's function) and on SQLite.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
NOW = sa.text("CURRENT_TIMESTAMP")
TRIGGER_TABLES = ("mcp_services", "mcp_templates")


def upgrade() -> None:
    op.create_table(
        "mcp_services",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.String(50), nullable=False),
        sa.Column("desc", sa.String(255), nullable=False),
        sa.Column("interaction_mode", sa.String(50), nullable=False),
        sa.Column("url", sa.String(255)),
        sa.Column("endpoint", sa.String(255)),
        sa.Column("api_key", sa.String(255), nullable=False),
        sa.Column("params", JSONType, server_default=sa.text("'{}'")),
        sa.Column("auth", JSONType, server_default=sa.text("'{}'")),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW),
    )
    op.create_index("idx_mcp_services_user_id", "mcp_services", ["user_id"])
    op.create_index("idx_mcp_services_desc", "mcp_services", ["desc"])
    op.create_index("idx_mcp_services_user_desc", "mcp_services", ["user_id", "desc"], unique=True)

    op.create_table(
        "mcp_executions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.String(50), nullable=False),
        sa.Column("tool_desc", sa.String(255), nullable=False),
        sa.Column("params", JSONType, server_default=sa.text("'{}'")),
        sa.Column("status", sa.String(50), nullable=False),
        sa.Column("result", JSONType),
        sa.Column("error_message", sa.Text()),
        sa.Column("execution_time_ms", sa.Integer()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.Column("task_id", sa.String(255)),
        sa.Column("tool_name", sa.String(255)),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("idx_mcp_executions_user_id", "mcp_executions", ["user_id"])
    op.create_index("idx_mcp_executions_tool_desc", "mcp_executions", ["tool_desc"])
    op.create_index("idx_mcp_executions_created_at", "mcp_executions", ["created_at"])
    op.create_index("idx_mcp_executions_task_id", "mcp_executions", ["task_id"], unique=True)

    op.create_table(
        "mcp_templates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("created_by", sa.String(50), server_default=sa.text("'admin'")),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW),
    )
    op.create_index("idx_mcp_templates_name", "mcp_templates", ["name"], unique=True)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE OR REPLACE FUNCTION update_updated_at_column()
            RETURNS TRIGGER AS $$
            BEGIN
                NEW.updated_at = CURRENT_TIMESTAMP;
                RETURN NEW;
            END;
            $$ language 'plpgsql'
            """
        )
        for table in TRIGGER_TABLES:
            op.execute(
                f"CREATE TRIGGER update_{table}_updated_at BEFORE UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION update_updated_at_column()"
            )
    else:
        # SQLite has no BEFORE-row assignment; an AFTER trigger that touches only updated_at
        # does not recurse (recursive_triggers is off by default).
        for table in TRIGGER_TABLES:
            op.execute(
                f"CREATE TRIGGER update_{table}_updated_at AFTER UPDATE ON {table} FOR EACH ROW "
                f"WHEN NEW.updated_at IS OLD.updated_at BEGIN "
                f"UPDATE {table} SET updated_at = CURRENT_TIMESTAMP WHERE id = NEW.id; END"
            )


def downgrade() -> None:
    is_pg = op.get_bind().dialect.name == "postgresql"
    for table in TRIGGER_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS update_{table}_updated_at" + (f" ON {table}" if is_pg else ""))
    if is_pg:
        op.execute("DROP FUNCTION IF EXISTS update_updated_at_column()")
    op.drop_index("idx_mcp_templates_name", table_name="mcp_templates")
    op.drop_table("mcp_templates")
    for name in ("task_id", "created_at", "tool_desc", "user_id"):
        op.drop_index(f"idx_mcp_executions_{name}", table_name="mcp_executions")
    op.drop_table("mcp_executions")
    for name in ("user_desc", "desc", "user_id"):
        op.drop_index(f"idx_mcp_services_{name}", table_name="mcp_services")
    op.drop_table("mcp_services")
