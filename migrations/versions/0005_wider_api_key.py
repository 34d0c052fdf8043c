"""Widen mcp_services.api_key to 1024 characters: with MCP_SECRET_KEY set it holds a Fernet token,
about 1.4 times the plain key plus a prefix (a 255-character key needs ~440).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mcp_services") as batch:
        batch.alter_column(
            "api_key", existing_type=sa.String(255), type_=sa.String(1024), existing_nullable=False
        )


def downgrade() -> None:
    # Refuses (rather than truncates) if encrypted keys are stored: decrypt them first.
    with op.batch_alter_table("mcp_services") as batch:
        batch.alter_column(
            "api_key", existing_type=sa.String(1024), type_=sa.String(255), existing_nullable=False
        )
