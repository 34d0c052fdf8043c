"""The streamable HTTP session a call's MCP task was started in (issue 16): a server may keep a
task only in that session, so a poll from another process, or after a worker restart, speaks in
it again (`worker.mcp.ServerSession`: its id and protocol version).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("mcp_executions") as batch:
        batch.add_column(sa.Column("server_session", JSONType))


def downgrade() -> None:
    with op.batch_alter_table("mcp_executions") as batch:
        batch.drop_column("server_session")
