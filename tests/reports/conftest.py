"""Fixtures for the report tests: sample data, its context, and the fake OpenAI server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fakes.openai_server import FakeOpenAI

from worker.reports import build_context, close_clients
from worker.settings import Settings

PERIOD = "2026-W47"  # Monday 2026-11-16 .. Sunday 2026-11-22
GENERATED_AT = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
API_KEY = "sk-test-0123456789abcdef-SECRET"


def sample_data() -> dict[str, Any]:
    """Seven work packages: 2 Completed, 3 In Progress, 1 Blocked, 1 New; 2 overdue; 2 unassigned."""
    return {
        "project": {"id": 7, "name": "Apollo"},
        "week": PERIOD,
        "work_packages": [
            {"id": 1, "subject": "Design API", "status": "Completed", "assignee": "Ann",
             "due_date": "2026-11-16", "priority": "High"},
            {"id": 2, "subject": "Write docs", "status": "Completed", "assignee": "Bob",
             "due_date": "2026-11-10", "priority": "Normal"},
            {"id": 3, "subject": "Build client", "status": "In Progress", "assignee": "Cy",
             "due_date": "2026-11-18", "priority": "High"},
            {"id": 4, "subject": "Load test", "status": "In Progress", "assignee": None,
             "due_date": "2026-11-22", "priority": "Normal"},
            {"id": 5, "subject": "Migrate data", "status": "In Progress", "assignee": "Dee",
             "due_date": "2026-12-01", "priority": "Low"},
            {"id": 6, "subject": "Security review", "status": "Blocked", "assignee": "",
             "due_date": None, "priority": "High"},
            {"id": 7, "subject": "Plan Q1", "status": "New", "assignee": "Eve", "priority": "Low"},
        ],
    }  # fmt: skip


@pytest.fixture
def context() -> dict[str, Any]:
    return build_context(sample_data(), PERIOD, generated_at=GENERATED_AT)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started fake OpenAI server; closed (and every client dropped) after the test."""
    with FakeOpenAI(hang_limit=10.0) as server:
        yield server
        close_clients()


@pytest.fixture
def openai_settings(fake_openai: FakeOpenAI, tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings pointing at the fake; keyword arguments override OPENAI_* variables."""

    def make(**overrides: str) -> Settings:
        env = {
            "MCP_DATA_DIR": str(tmp_path),
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_MODEL": "gpt-test-mini",
            "OPENAI_TIMEOUT": "5",
            "OPENAI_MAX_RETRIES": "0",
        }
        env.update({f"OPENAI_{key.upper()}": value for key, value in overrides.items()})
        return Settings.from_env(env)

    return make
