"""Settings from the environment: defaults, the seed's names, and clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from worker.errors import ConfigurationError
from worker.settings import Settings


def test_embedded_defaults_use_one_data_folder(tmp_path: Path) -> None:
    settings = Settings.from_env({"MCP_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'mcp-worker.sqlite3'}"
    assert settings.broker_url.startswith("filesystem://") and settings.broker_is_embedded
    assert settings.result_backend == f"file://{tmp_path / 'results'}"
    assert (
        settings.db_pool_size,
        settings.db_max_overflow,
        settings.db_pool_pre_ping,
        settings.db_nullpool,
    ) == (
        20,
        30,
        True,
        False,
    )


def test_seed_asyncpg_url_maps_to_psycopg2_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="worker.settings"):
        settings = Settings.from_env(
            {"DATABASE_URL": "postgresql+asyncpg://username:password@localhost:5432/mcp_db"}
        )
    assert settings.database_url == "postgresql+psycopg2://username:password@localhost:5432/mcp_db"
    assert "synchronous postgresql+psycopg2 driver" in caplog.text
    assert "password" not in caplog.text


def test_pool_options_from_the_environment() -> None:
    settings = Settings.from_env(
        {"DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "0", "DB_POOL_PRE_PING": "false", "DB_NULLPOOL": "true"}
    )
    assert (
        settings.db_pool_size,
        settings.db_max_overflow,
        settings.db_pool_pre_ping,
        settings.db_nullpool,
    ) == (
        5,
        0,
        False,
        True,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DB_POOL_SIZE": "many"}, "DB_POOL_SIZE must be an integer"),
        ({"DEVELOPMENT_MODE": "perhaps"}, "DEVELOPMENT_MODE must be true or false"),
        ({"MCP_CALL_TIMEOUT": "-1"}, "MCP_CALL_TIMEOUT must be positive"),
        ({"MCP_CALL_TIMEOUT": "0"}, "MCP_CALL_TIMEOUT must be positive"),
        ({"DB_POOL_PING_IDLE_S": "-0.5"}, "DB_POOL_PING_IDLE_S must be zero or more"),
        ({"MCP_TASK_SOFT_TIME_LIMIT": "10", "MCP_CALL_TIMEOUT": "60"}, "must exceed"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


def test_the_pool_ping_window_defaults_to_one_second_and_zero_means_always() -> None:
    assert Settings.from_env({}).db_pool_ping_idle_s == 1.0
    assert Settings.from_env({"DB_POOL_PING_IDLE_S": "0"}).db_pool_ping_idle_s == 0.0


def test_prepared_statements_are_on_unless_turned_off() -> None:
    assert Settings.from_env({}).db_prepared_statements is True
    assert Settings.from_env({"DB_PREPARED_STATEMENTS": "false"}).db_prepared_statements is False
    with pytest.raises(ConfigurationError, match="DB_PREPARED_STATEMENTS must be true or false"):
        Settings.from_env({"DB_PREPARED_STATEMENTS": "sometimes"})


def test_openai_key_is_not_in_repr() -> None:
    assert "sk-test-123" not in repr(Settings.from_env({"OPENAI_API_KEY": "sk-test-123"}))


def test_a_given_mapping_is_all_that_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_MAX_RETRIES", "7")
    assert Settings.from_env({}).max_retries == 3
    assert Settings.from_env().max_retries == 7


def test_blank_variables_count_as_unset_and_unknown_ones_are_ignored() -> None:
    settings = Settings.from_env({"DB_POOL_SIZE": " ", "OPENAI_MODEL": "", "NOT_A_SETTING": "x"})
    assert (settings.db_pool_size, settings.openai_model) == (20, "gpt-4o-mini")


def test_every_bad_value_is_named_in_one_configuration_error() -> None:
    # Never pydantic's own ValidationError: callers catch ConfigurationError (a WorkerError).
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"DB_POOL_SIZE": "0", "MCP_LEASE_SECONDS": "1", "LOG_FORMAT": "xml"})
    message = str(raised.value)
    assert "DB_POOL_SIZE must be at least 1, got 0" in message
    assert "MCP_LEASE_SECONDS must be at least 3" in message
    assert "LOG_FORMAT must be text or json, got 'xml'" in message


def test_hard_limits_follow_the_soft_ones_unless_set() -> None:
    settings = Settings.from_env({"MCP_TASK_SOFT_TIME_LIMIT": "100"})
    assert (settings.task_time_limit, settings.report_time_limit) == (160, 660)
    with pytest.raises(ConfigurationError, match="MCP_TASK_TIME_LIMIT must be at least 101, got 100"):
        Settings.from_env({"MCP_TASK_SOFT_TIME_LIMIT": "100", "MCP_TASK_TIME_LIMIT": "100"})


def test_recovery_defaults_are_seconds_not_an_hour() -> None:
    settings = Settings.from_env({})
    assert (settings.lease_seconds, settings.visibility_timeout) == (30.0, 60)
    assert settings.unacked_restore_interval * settings.unacked_restore_throttle == 5


def test_lists_and_commands_split_as_operators_write_them() -> None:
    settings = Settings.from_env(
        {"MCP_STDIO_ALLOWED_COMMANDS": "npx, uvx python", "MCP_STDIO_DEFAULT_COMMAND": "npx -y 'a b'"}
    )
    assert settings.stdio_allowed_commands == ("npx", "uvx", "python")
    assert settings.stdio_default_command == ("npx", "-y", "a b")


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ValueError, match="frozen"):
        settings.max_retries = 9  # type: ignore[misc]
