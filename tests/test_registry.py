"""Service resolution: own row, else global, else ServiceNotFound; dev-mode file; validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.db.models import McpService
from worker.demo.sample_data import load_sample_data
from worker.errors import ConfigurationError, InvalidService, ServiceNotFound
from worker.services.config import validate_record
from worker.services.devfile import load_config_file
from worker.services.registry import list_services, resolve
from worker.services.store import remove_service, save_service
from worker.settings import Settings, reset_settings


def test_resolution_prefers_own_row_then_global(db_session: Session) -> None:
    load_sample_data(db_session)
    own = resolve("user1", "project_management", db_session)
    assert (own.user_id, own.mode, own.url) == ("user1", "stdio", None)
    shared = resolve("user1", "openproject_weekly_report", db_session)
    assert (shared.user_id, shared.mode) == ("global", "streamable_http")
    with pytest.raises(ServiceNotFound, match="'project_management' for user 'user2'"):
        resolve("user2", "project_management", db_session)


def test_a_users_own_row_shadows_the_global_one(db_session: Session) -> None:
    load_sample_data(db_session)
    save_service(
        db_session,
        {
            "user_id": "user3",
            "desc": "openproject_weekly_report",
            "interaction_mode": "http",
            "url": "http://127.0.0.1:9/mcp",
            "api_key": "user3-secret-key",
        },
    )
    assert resolve("user3", "openproject_weekly_report", db_session).user_id == "user3"
    assert resolve("user1", "openproject_weekly_report", db_session).user_id == "global"
    listed = {(c.user_id, c.desc) for c in list_services(db_session, "user3")}
    assert ("user3", "openproject_weekly_report") in listed
    assert ("global", "openproject_weekly_report") not in listed


def test_sample_data_is_idempotent(db_session: Session) -> None:
    assert load_sample_data(db_session) == (3, 2)
    assert load_sample_data(db_session) == (0, 0)


@pytest.mark.parametrize(
    ("mode", "canonical"),
    [
        ("stdio", "stdio"),
        ("sse", "sse"),
        ("streamable_http", "streamable_http"),
        ("streamful_http", "streamable_http"),
        ("http", "streamable_http"),
    ],
)
def test_mode_aliases(mode: str, canonical: str) -> None:
    record = {
        "user_id": "u",
        "desc": "d",
        "interaction_mode": mode,
        "url": "http://127.0.0.1:1/mcp",
        "api_key": "k",
    }
    assert validate_record(record).mode == canonical


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"interaction_mode": "websocket"}, "interaction_mode 'websocket' is not supported"),
        ({"url": "ftp://example.com/x"}, "must be an http"),
        ({"url": None}, "needs a url"),
        ({"auth": {"type": "kerberos"}}, "auth type 'kerberos'"),
        ({"user_id": "u" * 51}, "longer than 50"),
        ({"params": [1, 2]}, "must be a JSON object"),
        ({"api_key": None}, "api_key"),
    ],
)
def test_bad_records_are_refused_when_saved(
    db_session: Session, change: dict[str, object], message: str
) -> None:
    record = {
        "user_id": "u",
        "desc": "d",
        "interaction_mode": "sse",
        "url": "http://127.0.0.1:1/sse",
        "api_key": "k",
    }
    with pytest.raises(InvalidService, match=message):
        save_service(db_session, {**record, **change})
    with pytest.raises(ServiceNotFound):
        resolve("u", "d", db_session)


def test_development_mode_reads_the_json_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "services.json"
    path.write_text(
        json.dumps(
            {
                "global": [
                    {
                        "desc": "reports",
                        "interaction_mode": "http",
                        "url": "http://127.0.0.1:8000/mcp",
                        "api_key": "$REPORTS_KEY",
                    }
                ],
                "alice": [
                    {
                        "desc": "pm",
                        "interaction_mode": "stdio",
                        "url": "mcp-worker demo-server",
                        "api_key": "${ALICE_KEY}",
                    }
                ],
            }
        )
    )
    monkeypatch.setenv("REPORTS_KEY", "from-env-reports")
    monkeypatch.setenv("ALICE_KEY", "from-env-alice")
    monkeypatch.setenv("DEVELOPMENT_MODE", "true")
    monkeypatch.setenv("MCP_CONFIG_FILE", str(path))
    reset_settings()
    try:
        assert resolve("alice", "pm").api_key == "from-env-alice"
        shared = resolve("alice", "reports")
        assert (shared.user_id, shared.api_key) == ("global", "from-env-reports")
        with pytest.raises(ServiceNotFound):
            resolve("bob", "pm")
    finally:
        monkeypatch.undo()
        reset_settings()


def test_list_format_of_the_dev_file(tmp_path: Path) -> None:
    path = tmp_path / "services.json"
    path.write_text(
        json.dumps(
            [
                {
                    "user_id": "global",
                    "desc": "r",
                    "interaction_mode": "sse",
                    "url": "http://127.0.0.1:1/sse",
                    "api_key": "k",
                }
            ]
        )
    )
    assert [c.desc for c in load_config_file(path, Settings.from_env({}))] == ["r"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('[{"user_id": "u", "desc": "d", "interaction_mode": "carrier-pigeon", "api_key": "k"}]', "entry 0"),
        ('{"u": [{"desc": "d", "interaction_mode": "sse", "api_key": "k"}]}', "user 'u' entry 0"),
        ("[1]", "entry 0 must be a JSON object"),
        ('"x"', "expected a list"),
    ],
)
def test_a_malformed_dev_file_names_the_file_and_the_entry(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=message) as info:
        load_config_file(path, Settings.from_env({}))
    assert str(path) in str(info.value)


def test_public_dict_masks_secrets() -> None:
    config = validate_record(
        {
            "user_id": "u",
            "desc": "d",
            "interaction_mode": "sse",
            "url": "http://127.0.0.1:1/sse",
            "api_key": "super-secret-value-1234",
            "auth": {"type": "api_key", "value": "super-secret-value-1234"},
        }
    )
    text = json.dumps(config.public_dict())
    assert "super-secret-value" not in text and "1234" in text
    assert "super-secret" not in repr(config)


def test_allowed_hosts_keep_http_services_off_other_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_ALLOWED_HOSTS", "mcp.example.com, 127.0.0.1")
    reset_settings()
    try:
        record = {"user_id": "u", "desc": "d", "interaction_mode": "http", "api_key": "k"}
        assert validate_record({**record, "url": "https://mcp.example.com/mcp"}).url
        assert validate_record({**record, "url": "http://127.0.0.1:8000/mcp"}).url
        for url in (
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.5/mcp",
            "http://localhost:5432/",
        ):
            with pytest.raises(InvalidService, match="not in MCP_ALLOWED_HOSTS"):
                validate_record({**record, "url": url})
    finally:
        monkeypatch.undo()
        reset_settings()


def _http_record(user: str, url: str, key: str) -> dict[str, str]:
    return {"user_id": user, "desc": "cached", "interaction_mode": "http", "url": url, "api_key": key}


def test_a_changed_or_removed_row_is_seen_at_once_despite_the_cache(db_session: Session) -> None:
    save_service(db_session, _http_record("carol", "http://127.0.0.1:9001/mcp", "first-key-0001"))
    assert resolve("carol", "cached", db_session).api_key == "first-key-0001"
    assert resolve("carol", "cached", db_session).api_key == "first-key-0001"  # served from the cache

    save_service(db_session, _http_record("carol", "http://127.0.0.1:9002/mcp", "rotated-key-0002"))
    rotated = resolve("carol", "cached", db_session)
    assert (rotated.url, rotated.api_key) == ("http://127.0.0.1:9002/mcp", "rotated-key-0002")

    # A change made behind the registry's back (plain SQL) is seen too.
    db_session.execute(
        sa.update(McpService)
        .where(McpService.user_id == "carol", McpService.desc == "cached")
        .values(params={"project_id": 7})
    )
    assert resolve("carol", "cached", db_session).tool_defaults == {"project_id": 7}

    assert remove_service(db_session, "carol", "cached")
    with pytest.raises(ServiceNotFound):
        resolve("carol", "cached", db_session)


def test_a_cached_row_is_validated_again_under_new_settings(
    db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_service(db_session, _http_record("dave", "http://10.0.0.5/mcp", "dave-key-0001"))
    assert resolve("dave", "cached", db_session).url == "http://10.0.0.5/mcp"
    monkeypatch.setenv("MCP_ALLOWED_HOSTS", "mcp.example.com")
    reset_settings()
    try:
        with pytest.raises(InvalidService, match="not in MCP_ALLOWED_HOSTS"):
            resolve("dave", "cached", db_session)
    finally:
        monkeypatch.undo()
        reset_settings()
