"""SQLAlchemy models: the seed's three tables plus what later features add.

The schema itself is created by the Alembic migrations in `migrations/`; these classes must
match them exactly (a test runs autogenerate against a migrated database and expects no diff).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on Postgres, JSON (text) on SQLite.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base for every table of the worker."""

    type_annotation_map = {dict[str, Any]: JSONType}  # noqa: RUF012  (SQLAlchemy reads it as a class attribute)


def _created() -> Any:
    return mapped_column(sa.DateTime(timezone=True), server_default=sa.func.current_timestamp())


def _updated() -> Any:
    # The database trigger keeps raw SQL updates honest; onupdate covers ORM updates everywhere.
    return mapped_column(
        sa.DateTime(timezone=True),
        server_default=sa.func.current_timestamp(),
        onupdate=sa.func.current_timestamp(),
    )


class McpService(Base):
    """One user's (or `global`) configuration of one MCP service."""

    __tablename__ = "mcp_services"
    __table_args__ = (
        sa.Index("idx_mcp_services_user_id", "user_id"),
        sa.Index("idx_mcp_services_desc", "desc"),
        sa.Index("idx_mcp_services_user_desc", "user_id", "desc", unique=True),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    desc: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    interaction_mode: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    url: Mapped[str | None] = mapped_column(sa.String(255))
    endpoint: Mapped[str | None] = mapped_column(sa.String(255))
    # Wider than the seed's 255: an encrypted key (MCP_SECRET_KEY) is longer than the plain one.
    api_key: Mapped[str] = mapped_column(sa.String(1024), nullable=False)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType, server_default=sa.text("'{}'"))
    auth: Mapped[dict[str, Any] | None] = mapped_column(JSONType, server_default=sa.text("'{}'"))
    created_at: Mapped[datetime | None] = _created()
    updated_at: Mapped[datetime | None] = _updated()


class McpExecution(Base):
    """The audit row of one tool call, keyed by the Celery task id across its attempts."""

    __tablename__ = "mcp_executions"
    __table_args__ = (
        sa.Index("idx_mcp_executions_user_id", "user_id"),
        sa.Index("idx_mcp_executions_tool_desc", "tool_desc"),
        sa.Index("idx_mcp_executions_created_at", "created_at"),
        sa.Index("idx_mcp_executions_task_id", "task_id", unique=True),
        sa.Index("idx_mcp_executions_status_started", "status", "started_at"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    tool_desc: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType, server_default=sa.text("'{}'"))
    status: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    result: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    execution_time_ms: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[datetime | None] = _created()
    task_id: Mapped[str | None] = mapped_column(sa.String(255))
    tool_name: Mapped[str | None] = mapped_column(sa.String(255))
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default=sa.text("0"))
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The server's latest `notifications/progress` (throttled), kept after the call ends.
    progress: Mapped[float | None] = mapped_column(sa.Float)
    progress_total: Mapped[float | None] = mapped_column(sa.Float)
    progress_message: Mapped[str | None] = mapped_column(sa.String(500))
    # Whether the result matched the tool's outputSchema (NULL: the tool declares none), and why not.
    output_valid: Mapped[bool | None] = mapped_column(sa.Boolean)
    output_error: Mapped[str | None] = mapped_column(sa.Text)
    # A call run as an MCP task: the server's task id, the streamable HTTP session it lives in
    # (`worker.mcp.ServerSession` as JSON; never shown), and the input request it waits on (redacted).
    server_task_id: Mapped[str | None] = mapped_column(sa.String(255))
    server_session: Mapped[Any] = mapped_column(JSONType, nullable=True)
    input_request: Mapped[Any] = mapped_column(JSONType, nullable=True)


class McpTemplate(Base):
    """A Jinja2 report template stored by name (user content: rendered only in the sandbox)."""

    __tablename__ = "mcp_templates"
    __table_args__ = (sa.Index("idx_mcp_templates_name", "name", unique=True),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    content: Mapped[str] = mapped_column(sa.Text, nullable=False)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_by: Mapped[str | None] = mapped_column(sa.String(50), server_default=sa.text("'admin'"))
    created_at: Mapped[datetime | None] = _created()
    updated_at: Mapped[datetime | None] = _updated()


class McpReport(Base):
    """One rendered (and possibly refined) report for a user, service and ISO week."""

    __tablename__ = "mcp_reports"
    __table_args__ = (
        sa.Index("idx_mcp_reports_user_created", "user_id", "created_at"),
        sa.Index("idx_mcp_reports_service_period", "service", "period"),
        sa.Index("idx_mcp_reports_task_id", "task_id", unique=True),
        sa.UniqueConstraint("schedule_id", "period", name="uq_mcp_reports_schedule_period"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    user_id: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    service: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    template: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    period: Mapped[str] = mapped_column(sa.String(10), nullable=False)
    content: Mapped[str] = mapped_column(sa.Text, nullable=False)
    raw_content: Mapped[str] = mapped_column(sa.Text, nullable=False)
    refined: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    refine_model: Mapped[str | None] = mapped_column(sa.String(100))
    refine_error: Mapped[str | None] = mapped_column(sa.Text)
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    total_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    undefined_names: Mapped[Any] = mapped_column(JSONType, nullable=True)
    execution_id: Mapped[int | None] = mapped_column(
        sa.Integer, sa.ForeignKey("mcp_executions.id", ondelete="SET NULL", name="fk_mcp_reports_execution")
    )
    schedule_id: Mapped[int | None] = mapped_column(
        sa.Integer,
        sa.ForeignKey("mcp_report_schedules.id", ondelete="SET NULL", name="fk_mcp_reports_schedule"),
    )
    created_at: Mapped[datetime | None] = _created()


class McpReportSchedule(Base):
    """A user's recurring report: which service and template, when (cron, time zone), and how
    it has been going (last slot run, consecutive failures)."""

    __tablename__ = "mcp_report_schedules"
    __table_args__ = (
        sa.Index("idx_mcp_report_schedules_due", "enabled", "next_run_at"),
        sa.Index("idx_mcp_report_schedules_user_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    service: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    template: Mapped[str | None] = mapped_column(sa.String(100))
    cron: Mapped[str] = mapped_column(sa.String(100), nullable=False, server_default=sa.text("'0 8 * * 1'"))
    timezone: Mapped[str] = mapped_column(sa.String(64), nullable=False, server_default=sa.text("'UTC'"))
    refine: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    enabled: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.true())
    last_slot: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    next_run_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default=sa.text("0"))
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text)
    # Where each report goes (worker.delivery.channels); secret values encrypted (MCP_SECRET_KEY).
    channels: Mapped[Any] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime | None] = _created()
    updated_at: Mapped[datetime | None] = _updated()


class McpReportDelivery(Base):
    """One report sent through one channel (an email address, a Slack or a signed webhook): the
    unique (report, channel) key is claimed before sending, so the report is sent once."""

    __tablename__ = "mcp_report_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("report_id", "channel_key", name="uq_mcp_report_deliveries_report_channel"),
        sa.Index("idx_mcp_report_deliveries_status", "status"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(
        sa.Integer,
        sa.ForeignKey("mcp_reports.id", ondelete="CASCADE", name="fk_mcp_report_deliveries_report"),
        nullable=False,
    )
    channel: Mapped[str] = mapped_column(sa.String(20), nullable=False)
    channel_key: Mapped[str] = mapped_column(sa.String(80), nullable=False)
    # What the operator sees: an address, or a URL without its query (never a secret).
    target: Mapped[str] = mapped_column(sa.String(500), nullable=False)
    # The channel as configured when the report was stored; secret values encrypted (MCP_SECRET_KEY).
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, server_default=sa.text("'{}'"))
    status: Mapped[str] = mapped_column(sa.String(20), nullable=False, server_default=sa.text("'pending'"))
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default=sa.text("0"))
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    response_code: Mapped[int | None] = mapped_column(sa.Integer)
    message_id: Mapped[str | None] = mapped_column(sa.String(255))
    claimed_by: Mapped[str | None] = mapped_column(sa.String(255))
    claimed_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime | None] = _created()


class McpOAuthToken(Base):
    """An OAuth access token the worker obtained for one credential (issuer, client, scopes,
    resource, client secret digest), encrypted like `McpService.api_key`; its row is also the
    cross-process lock for fetching it (`worker.oauth.tokens`)."""

    __tablename__ = "mcp_oauth_tokens"
    __table_args__ = (sa.Index("idx_mcp_oauth_tokens_key", "credential_key", unique=True),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    credential_key: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    issuer: Mapped[str] = mapped_column(sa.String(1024), nullable=False)
    client_id: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    scopes: Mapped[str] = mapped_column(sa.String(1024), nullable=False, server_default=sa.text("''"))
    resource: Mapped[str | None] = mapped_column(sa.String(1024))
    access_token: Mapped[str | None] = mapped_column(sa.Text)
    token_type: Mapped[str | None] = mapped_column(sa.String(50))
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    fetched_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    token_requests: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default=sa.text("0"))
    created_at: Mapped[datetime | None] = _created()
