"""`mcp-worker db ...` and `services ...` as an operator runs them, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from stack import fresh_database
from test_schema import SEED_INDEXES

CLI = [sys.executable, "-m", "worker.cli"]


@pytest.fixture
def fresh_db_env() -> Iterator[dict[str, str]]:
    with fresh_database("mcp_worker_cli") as url:
        yield {**os.environ, "DATABASE_URL": url}


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60, input=stdin)


def test_db_upgrade_sample_data_and_masked_listing(fresh_db_env: dict[str, str]) -> None:
    upgraded = run(fresh_db_env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "database at revision" in upgraded.stdout

    engine = sa.create_engine(fresh_db_env["DATABASE_URL"])
    inspector = sa.inspect(engine)
    for table, indexes in SEED_INDEXES.items():
        assert indexes <= {i["name"] for i in inspector.get_indexes(table)}
    engine.dispose()

    first = run(fresh_db_env, "db", "sample-data")
    second = run(fresh_db_env, "db", "sample-data")
    assert first.returncode == 0 and "3 service(s) and 2 template(s) added" in first.stdout
    assert second.returncode == 0 and "0 service(s) and 0 template(s) added" in second.stdout

    listed = run(fresh_db_env, "services", "list", "--user", "user1")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any("project_management" in line and line.startswith("user1") for line in lines)
    assert any("openproject_weekly_report" in line and line.startswith("global") for line in lines)
    assert not any("enterprise_reports" in line for line in lines)
    assert "user1-api-key" not in listed.stdout and "demo-api-key" not in listed.stdout
    assert "****" in listed.stdout

    shown = run(fresh_db_env, "services", "show", "user1", "project_management")
    assert shown.returncode == 0 and json.loads(shown.stdout)["user_id"] == "user1"
    assert "user1-api-key" not in shown.stdout

    missing = run(fresh_db_env, "services", "show", "user2", "project_management")
    assert missing.returncode == 1
    assert "no MCP service 'project_management' for user 'user2'" in missing.stderr


def test_services_add_reads_the_key_from_stdin_and_rejects_bad_modes(fresh_db_env: dict[str, str]) -> None:
    assert run(fresh_db_env, "db", "upgrade").returncode == 0
    added = run(
        fresh_db_env,
        "services",
        "add",
        "--user",
        "alice",
        "--desc",
        "pm",
        "--mode",
        "http",
        "--url",
        "http://127.0.0.1:8000/mcp",
        "--api-key-file",
        "-",
        "--auth",
        '{"type": "api_key", "header": "X-API-Key"}',
        stdin="alice-very-secret-key\n",
    )
    assert added.returncode == 0, added.stderr
    assert "alice-very-secret-key" not in added.stdout
    assert json.loads(added.stdout)["interaction_mode"] == "streamable_http"

    bad = run(
        fresh_db_env,
        "services",
        "add",
        "--user",
        "alice",
        "--desc",
        "x",
        "--mode",
        "telnet",
        "--url",
        "http://127.0.0.1/",
        "--api-key-env",
        "HOME",
    )
    assert bad.returncode == 1 and "interaction_mode 'telnet' is not supported" in bad.stderr

    removed = run(fresh_db_env, "services", "remove", "alice", "pm")
    assert removed.returncode == 0
    assert run(fresh_db_env, "services", "remove", "alice", "pm").returncode == 1
