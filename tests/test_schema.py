"""The migrations create the seed's schema, agree with the models, and go both ways."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from stack import fresh_database

from worker.db import schema
from worker.db.models import Base

SEED_COLUMNS = {
    "mcp_services": [
        "id",
        "user_id",
        "desc",
        "interaction_mode",
        "url",
        "endpoint",
        "api_key",
        "params",
        "auth",
        "created_at",
        "updated_at",
    ],
    "mcp_executions": [
        "id",
        "user_id",
        "tool_desc",
        "params",
        "status",
        "result",
        "error_message",
        "execution_time_ms",
        "created_at",
    ],
    "mcp_templates": ["id", "name", "content", "description", "created_by", "created_at", "updated_at"],
}
SEED_INDEXES = {
    "mcp_services": {"idx_mcp_services_user_id", "idx_mcp_services_desc", "idx_mcp_services_user_desc"},
    "mcp_executions": {
        "idx_mcp_executions_user_id",
        "idx_mcp_executions_tool_desc",
        "idx_mcp_executions_created_at",
    },
    "mcp_templates": {"idx_mcp_templates_name"},
}
EXTRA_EXECUTION_COLUMNS = ["task_id", "tool_name", "attempts", "started_at", "finished_at"]


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A new, empty Postgres database for this test alone."""
    with fresh_database("mcp_worker_fresh") as url:
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def any_url(request: pytest.FixtureRequest, fresh_pg_url: str, tmp_path: Path) -> str:
    return fresh_pg_url if request.param == "postgresql" else f"sqlite:///{tmp_path / 'schema.sqlite3'}"


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        engine.dispose()


def test_first_migration_creates_exactly_the_seed_tables_columns_and_index_names(fresh_pg_url: str) -> None:
    schema.upgrade(fresh_pg_url, revision="0001")
    engine = sa.create_engine(fresh_pg_url)
    inspector = sa.inspect(engine)
    assert set(inspector.get_table_names()) == {
        "mcp_services",
        "mcp_executions",
        "mcp_templates",
        "alembic_version",
    }
    for table, columns in SEED_COLUMNS.items():
        present = [c["name"] for c in inspector.get_columns(table)]
        assert present[: len(columns)] == columns
        indexes = {i["name"] for i in inspector.get_indexes(table)}
        assert SEED_INDEXES[table] <= indexes
    assert [c["name"] for c in inspector.get_columns("mcp_executions")][9:] == EXTRA_EXECUTION_COLUMNS
    unique = {i["name"]: i for i in inspector.get_indexes("mcp_services")}["idx_mcp_services_user_desc"]
    assert unique["unique"] and unique["column_names"] == ["user_id", "desc"]
    types = {c["name"]: str(c["type"]) for c in inspector.get_columns("mcp_services")}
    assert types["params"] == "JSONB" and types["auth"] == "JSONB"
    engine.dispose()


def test_quoted_desc_is_usable_in_raw_sql_on_postgres(fresh_pg_url: str) -> None:
    schema.upgrade(fresh_pg_url)
    engine = sa.create_engine(fresh_pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO mcp_services (user_id, \"desc\", interaction_mode, api_key) VALUES ('u', 'd', 'sse', 'k')"
            )
        )
        assert conn.execute(sa.text('SELECT "desc", params FROM mcp_services')).one() == ("d", {})
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
            conn.execute(
                sa.text(
                    'INSERT INTO mcp_services (user_id, "desc", interaction_mode, api_key) '
                    "VALUES ('u', 'd', 'sse', 'k2')"
                )
            )
    engine.dispose()


def test_models_and_migrations_agree(any_url: str) -> None:
    schema.upgrade(any_url)
    assert _diff(any_url) == []


def test_downgrade_to_base_and_back(any_url: str) -> None:
    schema.upgrade(any_url)
    schema.downgrade(any_url)
    engine = sa.create_engine(any_url)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    schema.upgrade(any_url)
    assert _diff(any_url) == []


def test_updated_at_is_kept_current_by_the_database(any_url: str) -> None:
    schema.upgrade(any_url)
    engine = sa.create_engine(any_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO mcp_templates (name, content, updated_at) VALUES ('t', 'x', '2000-01-01 00:00:00+00')"
            )
        )
    # CURRENT_TIMESTAMP has one-second resolution on SQLite; a raw UPDATE must still move it.
    time.sleep(0.01)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mcp_templates SET content = 'y' WHERE name = 't'"))
        updated, created_by = conn.execute(sa.text("SELECT updated_at, created_by FROM mcp_templates")).one()
    assert str(updated)[:4] != "2000"
    assert created_by == "admin"
    engine.dispose()
