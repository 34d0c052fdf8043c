"""The seed document's sample services and templates, loadable idempotently.

The seed writes its template bodies as SQL strings with `\\n`; under Postgres's standard
conforming strings those would be a backslash and an `n`. The intent is plainly newlines, so the
bodies are stored with real newlines.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.db.models import McpService, McpTemplate
from worker.services.config import validate_record
from worker.services.store import save_service

SAMPLE_SERVICES: tuple[dict[str, Any], ...] = (
    {
        "user_id": "global",
        "desc": "openproject_weekly_report",
        "interaction_mode": "streamful_http",
        "url": "http://localhost:8000/mcp",
        "endpoint": "https://demo.openproject.com",
        "api_key": "demo-api-key",
        "params": {"project_id": 1},
        "auth": {"type": "api_key", "value": "demo-api-key"},
    },
    {
        "user_id": "user1",
        "desc": "project_management",
        "interaction_mode": "stdio",
        "url": None,
        "endpoint": "https://company.openproject.com",
        "api_key": "user1-api-key",
        "params": {"project_id": 5},
        "auth": {"type": "api_key", "value": "user1-api-key"},
    },
    {
        "user_id": "user2",
        "desc": "enterprise_reports",
        "interaction_mode": "sse",
        "url": "http://localhost:8001/mcp",
        "endpoint": "https://enterprise.openproject.com",
        "api_key": "enterprise-api-key",
        "params": {"project_id": 10, "include_archived": True},
        "auth": {"type": "oauth", "provider": "openproject"},
    },
)

SEED_WEEKLY_REPORT = (
    "# {{ project.name }} Weekly Report\n\n**Week**: {{ week }}\n\n## Tasks\n"
    "{% for task in work_packages %}- {{ task.subject }} ({{ task.status }})\n{% endfor %}"
)
SEED_EXECUTIVE_SUMMARY = (
    "# Executive Summary\n\n**Project**: {{ project.name }}\n**Progress**: {{ work_packages|length }} tasks total\n\n"
    "## Key Metrics\n"
    "- Completed: {{ work_packages|selectattr('status', 'equalto', 'Completed')|list|length }}\n"
    "- In Progress: {{ work_packages|selectattr('status', 'equalto', 'In Progress')|list|length }}\n"
    "- Blocked: {{ work_packages|selectattr('status', 'equalto', 'Blocked')|list|length }}"
)
SAMPLE_TEMPLATES: tuple[dict[str, str], ...] = (
    {
        "name": "weekly_report.j2",
        "content": SEED_WEEKLY_REPORT,
        "description": "Standard weekly report template",
    },
    {
        "name": "executive_summary.j2",
        "content": SEED_EXECUTIVE_SUMMARY,
        "description": "Executive summary template",
    },
)


def load_sample_data(session: Session, overrides: dict[str, dict[str, Any]] | None = None) -> tuple[int, int]:
    """Insert the sample services and templates that are not there yet.

    `overrides` maps a service desc to fields that replace the seed's (the demo points the
    samples at its own demo server). Existing rows are left alone, so a second run changes
    nothing. Returns (services added, templates added).
    """
    overrides = overrides or {}
    services_added = templates_added = 0
    for sample in SAMPLE_SERVICES:
        record = {**sample, **overrides.get(sample["desc"], {})}
        validate_record(record)
        exists = session.scalar(
            sa.select(McpService.id).where(
                McpService.user_id == record["user_id"], McpService.desc == record["desc"]
            )
        )
        if exists is None:
            save_service(session, record, check_command=False)
            services_added += 1
    for template in SAMPLE_TEMPLATES:
        exists = session.scalar(sa.select(McpTemplate.id).where(McpTemplate.name == template["name"]))
        if exists is None:
            session.add(McpTemplate(**template))
            templates_added += 1
    session.flush()
    return services_added, templates_added
