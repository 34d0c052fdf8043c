"""Report persistence: templates from `mcp_templates` (falling back to the bundled ones) and
report rows in `mcp_reports`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.db.models import McpReport, McpTemplate
from worker.errors import TemplateNotFound
from worker.reports.render import BUNDLED_TEMPLATE_NAMES, bundled_template, compile_template


@dataclass(frozen=True)
class TemplateSource:
    name: str
    content: str
    origin: str  # "database" or "bundled"


def load_template(session: Session, name: str) -> TemplateSource:
    """The template `name` from the database, else the package.

    Raises:
        TemplateNotFound: neither has it.
    """
    content = session.scalar(sa.select(McpTemplate.content).where(McpTemplate.name == name))
    if content is not None:
        return TemplateSource(name, content, "database")
    bundled = bundled_template(name)
    if bundled is not None:
        return TemplateSource(name, bundled, "bundled")
    raise TemplateNotFound(
        f"no template {name!r} in mcp_templates nor bundled (bundled: {', '.join(BUNDLED_TEMPLATE_NAMES)})"
    )


def save_template(
    session: Session, name: str, content: str, description: str | None, created_by: str | None
) -> bool:
    """Validate (compile in the sandbox) and store a template; True when it was new.

    Raises:
        TemplateError: the template does not compile; nothing is stored.
    """
    compile_template(name, content)
    row = session.scalars(sa.select(McpTemplate).where(McpTemplate.name == name)).one_or_none()
    if row is None:
        session.add(
            McpTemplate(name=name, content=content, description=description, created_by=created_by or "admin")
        )
        return True
    row.content = content
    if description is not None:
        row.description = description
    return False


def list_templates(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        sa.select(
            McpTemplate.name, McpTemplate.description, McpTemplate.created_by, McpTemplate.updated_at
        ).order_by(McpTemplate.name)
    ).all()
    stored = [
        {"name": r.name, "origin": "database", "description": r.description, "updated_at": r.updated_at}
        for r in rows
    ]
    names = {r["name"] for r in stored}
    bundled = [
        {"name": n, "origin": "bundled", "description": "bundled with mcp-worker", "updated_at": None}
        for n in BUNDLED_TEMPLATE_NAMES
        if n not in names
    ]
    return stored + bundled


def remove_template(session: Session, name: str) -> bool:
    result = session.execute(sa.delete(McpTemplate).where(McpTemplate.name == name))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def insert_report(session: Session, values: dict[str, Any]) -> int:
    """Store a report once: a second insert for the same task id (or the same schedule and
    period) does nothing, and the id of the report already there is returned."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(McpReport).values(**values).on_conflict_do_nothing())
    query = sa.select(McpReport.id).where(McpReport.task_id == values["task_id"])
    if values.get("schedule_id") is not None:
        query = sa.select(McpReport.id).where(
            sa.or_(
                McpReport.task_id == values["task_id"],
                sa.and_(McpReport.schedule_id == values["schedule_id"], McpReport.period == values["period"]),
            )
        )
    return int(session.scalars(query.limit(1)).one())


def report_for_task(session: Session, task_id: str) -> McpReport | None:
    return session.scalars(sa.select(McpReport).where(McpReport.task_id == task_id)).one_or_none()


def report_as_dict(row: McpReport, *, with_content: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "task_id": row.task_id,
        "user_id": row.user_id,
        "service": row.service,
        "template": row.template,
        "period": row.period,
        "refined": row.refined,
        "refine_model": row.refine_model,
        "refine_error": row.refine_error,
        "tokens": {
            "prompt": row.prompt_tokens,
            "completion": row.completion_tokens,
            "total": row.total_tokens,
        },
        "undefined_names": row.undefined_names or [],
        "execution_id": row.execution_id,
        "schedule_id": row.schedule_id,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }
    if with_content:
        data["content"] = row.content
        data["raw_content"] = row.raw_content
    return data
