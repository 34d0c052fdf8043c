"""mcp_oauth_tokens: OAuth access tokens the worker obtained (client credentials), one row per
credential (issuer + client + scopes + resource + a digest of the client's secret), the token
encrypted like `mcp_services.api_key`. The row is also the lock that makes one process at a time
fetch a credential's token (`SELECT ... FOR UPDATE`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "mcp_oauth_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("credential_key", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(1024), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("scopes", sa.String(1024), nullable=False, server_default=sa.text("''")),
        sa.Column("resource", sa.String(1024)),
        sa.Column("access_token", sa.Text()),
        sa.Column("token_type", sa.String(50)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("fetched_at", sa.DateTime(timezone=True)),
        sa.Column("token_requests", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW),
    )
    op.create_index("idx_mcp_oauth_tokens_key", "mcp_oauth_tokens", ["credential_key"], unique=True)


def downgrade() -> None:
    op.drop_index("idx_mcp_oauth_tokens_key", table_name="mcp_oauth_tokens")
    op.drop_table("mcp_oauth_tokens")
