"""Typed settings, read from the environment in one place.

Every knob the worker, the CLI and the producers read lives on `Settings`. Values come from the
environment (names as in the seed document where it has one); `get_settings()` caches one instance
per process and `reset_settings()` drops it (tests and the CLI's `--data-dir` use that).
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import platformdirs

from worker.errors import ConfigurationError

logger = logging.getLogger(__name__)

# The MCP runtime waits this long past connect + call timeouts before giving up on a call (the
# bookkeeping around a call and a dying session's close must not be cut short); the task's soft
# limit must leave room for it. Used through `worker.services.config.Timeouts.bound`.
CALL_MARGIN_S = 5.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# The seed's DATABASE_URL uses the asyncio driver; the worker is synchronous (Celery), so the same
# database is reached through psycopg2.
_ASYNC_DRIVERS = {
    "postgresql+asyncpg": "postgresql+psycopg2",
    "postgres+asyncpg": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "sqlite+aiosqlite": "sqlite",
}


def _env_bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def _env_int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


def _env_float(env: dict[str, str], name: str, default: float, *, zero_ok: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigurationError(f"{name} must be {'zero or more' if zero_ok else 'positive'}, got {value}")
    return value


def _env_list(env: dict[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    return tuple(item.strip() for item in raw.replace(",", " ").split() if item.strip())


def normalize_database_url(url: str) -> str:
    """Map the seed's async driver names onto the synchronous drivers the worker uses."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError("DATABASE_URL must look like postgresql://user@host/db")
    mapped = _ASYNC_DRIVERS.get(scheme)
    if mapped is None:
        return url
    if "+asyncpg" in scheme or "+aiosqlite" in scheme:
        logger.info(
            "DATABASE_URL uses %s; the worker connects with the synchronous %s driver", scheme, mapped
        )
    return f"{mapped}://{rest}"


def default_data_dir() -> Path:
    """The per-user folder for the embedded default (SQLite, file broker, results)."""
    return Path(platformdirs.user_data_dir("mcp-worker", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Everything configurable, typed. Build with `Settings.from_env()`."""

    data_dir: Path
    database_url: str
    database_is_embedded: bool
    broker_url: str
    result_backend: str
    broker_is_embedded: bool
    development_mode: bool = False
    config_file: Path | None = None

    db_pool_size: int = 20
    db_max_overflow: int = 30
    db_pool_pre_ping: bool = True
    # A pooled connection used less than this long ago is handed out without a ping (0: always ping).
    db_pool_ping_idle_s: float = 1.0
    # The hot path's statements as server-side prepared statements (off behind PgBouncer in
    # transaction mode, which hands each statement to any server connection).
    db_prepared_statements: bool = True
    db_nullpool: bool = False

    secret_key: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_timeout: float = 30.0
    openai_max_retries: int = 2

    connect_timeout: float = 10.0
    call_timeout: float = 60.0
    max_retries: int = 3
    max_result_bytes: int = 1024 * 1024
    max_argument_bytes: int = 256 * 1024
    session_idle_ttl: float = 300.0
    stdio_allowed_commands: tuple[str, ...] = ()
    stdio_default_command: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_concurrency_per_service: int = 8

    task_soft_time_limit: int = 300
    task_time_limit: int = 360
    report_soft_time_limit: int = 600
    report_time_limit: int = 660
    visibility_timeout: int = 3600
    unacked_restore_interval: int = 10
    unacked_restore_throttle: int = 10
    result_expires: int = 86400
    schedule_max_failures: int = 5
    retention_days: int = 90
    log_level: str = "INFO"
    log_format: str = "text"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read the settings from `environ` (default: the process environment).

        Raises:
            ConfigurationError: a value does not parse.
        """
        env = dict(os.environ if environ is None else environ)
        data_dir = Path(env.get("MCP_DATA_DIR") or default_data_dir()).expanduser()

        raw_db = env.get("DATABASE_URL", "").strip()
        if raw_db:
            database_url, db_embedded = normalize_database_url(raw_db), False
        else:
            database_url, db_embedded = f"sqlite:///{data_dir / 'mcp-worker.sqlite3'}", True

        broker = env.get("CELERY_BROKER_URL", "").strip()
        broker_embedded = not broker
        if broker_embedded:
            # The file transport ignores the host; naming one keeps Kombu from warning about it.
            broker = "filesystem://localhost/"
        backend = env.get("CELERY_RESULT_BACKEND", "").strip()
        if not backend:
            backend = f"file://{data_dir / 'results'}" if broker_embedded else broker

        config_file = env.get("MCP_CONFIG_FILE", "").strip()
        default_command = env.get("MCP_STDIO_DEFAULT_COMMAND", "").strip()
        soft = _env_int(env, "MCP_TASK_SOFT_TIME_LIMIT", 300, minimum=1)
        connect_timeout = _env_float(env, "MCP_CONNECT_TIMEOUT", 10.0)
        call_timeout = _env_float(env, "MCP_CALL_TIMEOUT", 60.0)
        if soft <= connect_timeout + call_timeout + CALL_MARGIN_S:
            raise ConfigurationError(
                "MCP_TASK_SOFT_TIME_LIMIT must exceed MCP_CONNECT_TIMEOUT + MCP_CALL_TIMEOUT + "
                f"{CALL_MARGIN_S:.0f} s ({soft} <= {connect_timeout} + {call_timeout} + {CALL_MARGIN_S:.0f})"
            )
        report_soft = _env_int(env, "MCP_REPORT_SOFT_TIME_LIMIT", 600, minimum=1)
        log_format = env.get("LOG_FORMAT", "text").strip().lower()
        if log_format not in ("text", "json"):
            raise ConfigurationError(f"LOG_FORMAT must be text or json, got {log_format!r}")

        return cls(
            data_dir=data_dir,
            database_url=database_url,
            database_is_embedded=db_embedded,
            broker_url=broker,
            result_backend=backend,
            broker_is_embedded=broker_embedded,
            development_mode=_env_bool(env, "DEVELOPMENT_MODE", False),
            config_file=Path(config_file).expanduser() if config_file else None,
            db_pool_size=_env_int(env, "DB_POOL_SIZE", 20, minimum=1),
            db_max_overflow=_env_int(env, "DB_MAX_OVERFLOW", 30),
            db_pool_pre_ping=_env_bool(env, "DB_POOL_PRE_PING", True),
            db_pool_ping_idle_s=_env_float(env, "DB_POOL_PING_IDLE_S", 1.0, zero_ok=True),
            db_prepared_statements=_env_bool(env, "DB_PREPARED_STATEMENTS", True),
            db_nullpool=_env_bool(env, "DB_NULLPOOL", False),
            secret_key=env.get("MCP_SECRET_KEY") or None,
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            openai_model=env.get("OPENAI_MODEL") or "gpt-4o-mini",
            openai_timeout=_env_float(env, "OPENAI_TIMEOUT", 30.0),
            openai_max_retries=_env_int(env, "OPENAI_MAX_RETRIES", 2),
            connect_timeout=connect_timeout,
            call_timeout=call_timeout,
            max_retries=_env_int(env, "MCP_MAX_RETRIES", 3),
            max_result_bytes=_env_int(env, "MCP_MAX_RESULT_BYTES", 1024 * 1024, minimum=1024),
            max_argument_bytes=_env_int(env, "MCP_MAX_ARGUMENT_BYTES", 256 * 1024, minimum=1024),
            session_idle_ttl=_env_float(env, "MCP_SESSION_IDLE_TTL", 300.0),
            stdio_allowed_commands=_env_list(env, "MCP_STDIO_ALLOWED_COMMANDS"),
            stdio_default_command=tuple(shlex.split(default_command)),
            allowed_hosts=_env_list(env, "MCP_ALLOWED_HOSTS"),
            max_concurrency_per_service=_env_int(env, "MCP_MAX_CONCURRENCY_PER_SERVICE", 8, minimum=1),
            task_soft_time_limit=soft,
            task_time_limit=_env_int(env, "MCP_TASK_TIME_LIMIT", soft + 60, minimum=soft + 1),
            report_soft_time_limit=report_soft,
            report_time_limit=_env_int(
                env, "MCP_REPORT_TIME_LIMIT", report_soft + 60, minimum=report_soft + 1
            ),
            visibility_timeout=_env_int(env, "MCP_VISIBILITY_TIMEOUT", 3600, minimum=1),
            unacked_restore_interval=_env_int(env, "MCP_UNACKED_RESTORE_INTERVAL", 10, minimum=1),
            unacked_restore_throttle=_env_int(env, "MCP_UNACKED_RESTORE_THROTTLE", 10, minimum=1),
            result_expires=_env_int(env, "MCP_RESULT_EXPIRES", 86400, minimum=60),
            schedule_max_failures=_env_int(env, "MCP_SCHEDULE_MAX_FAILURES", 5, minimum=1),
            retention_days=_env_int(env, "MCP_RETENTION_DAYS", 90),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            log_format=log_format,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget the cached settings so the next `get_settings()` reads the environment again."""
    get_settings.cache_clear()
