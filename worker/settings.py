"""Typed settings, read from the environment in one place, on pydantic-settings.

Every knob the worker, the CLI and the producers read is a field of `Settings`, with its
environment name (as in the seed document where it has one), its one default and its one
constraint. An empty variable counts as unset. `get_settings()` caches one instance per process
and `reset_settings()` drops it (tests and the CLI's `--data-dir` use that). A value that does
not parse is a `ConfigurationError` naming the variable; pydantic's own errors never escape.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from worker.errors import ConfigurationError

logger = logging.getLogger(__name__)

# The MCP runtime waits this long past connect + call timeouts before giving up on a call (the
# bookkeeping around a call and a dying session's close must not be cut short); the task's soft
# limit must leave room for it. Used through `worker.services.config.Timeouts.bound`.
CALL_MARGIN_S = 5.0

# The seed's DATABASE_URL uses the asyncio driver; the worker is synchronous (Celery), so the same
# database is reached through psycopg2.
_ASYNC_DRIVERS = {
    "postgresql+asyncpg": "postgresql+psycopg2",
    "postgres+asyncpg": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "sqlite+aiosqlite": "sqlite",
}


def normalize_database_url(url: str) -> str:
    """Map the seed's async driver names onto the synchronous drivers the worker uses.

    Raises:
        ConfigurationError: the URL has no scheme.
    """
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


def _words(raw: object) -> object:
    # Commas or spaces between items, as operators write lists in one variable.
    return tuple(raw.replace(",", " ").split()) if isinstance(raw, str) else raw


def _command(raw: object) -> object:
    return tuple(shlex.split(raw)) if isinstance(raw, str) else raw


Words = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_words)]
Command = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_command)]
Folder = Annotated[Path, AfterValidator(Path.expanduser)]
LogFormat = Annotated[
    Literal["text", "json"], BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v)
]
LogLevel = Annotated[str, AfterValidator(str.upper)]


def env(name: str, default: Any = None, **constraints: Any) -> Any:
    """A field read from the environment variable `name`."""
    return Field(default, validation_alias=name, **constraints)


# The mapping `from_env` reads instead of the process environment, while it builds one instance.
_environ: ContextVar[Mapping[str, str] | None] = ContextVar("worker_settings_environ", default=None)


class _Environment(EnvSettingsSource):
    """The environment source, reading the mapping given to `from_env` (never a .env file); a
    blank variable counts as unset."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        given = _environ.get()
        return {
            name: value for name, value in (os.environ if given is None else given).items() if value.strip()
        }


class Settings(BaseSettings):
    """Everything configurable, typed. Build with `Settings.from_env()`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True)

    data_dir: Folder = Field(default_factory=default_data_dir, validation_alias="MCP_DATA_DIR")
    # Read as given; `database_url` and `broker_url` say what is used (repr off: they may hold passwords).
    raw_database_url: str = Field("", validation_alias="DATABASE_URL", repr=False)
    raw_broker_url: str = Field("", validation_alias="CELERY_BROKER_URL", repr=False)
    raw_result_backend: str = Field("", validation_alias="CELERY_RESULT_BACKEND", repr=False)
    development_mode: bool = env("DEVELOPMENT_MODE", False)
    config_file: Folder | None = env("MCP_CONFIG_FILE")

    db_pool_size: int = env("DB_POOL_SIZE", 20, ge=1)
    db_max_overflow: int = env("DB_MAX_OVERFLOW", 30, ge=0)
    db_pool_pre_ping: bool = env("DB_POOL_PRE_PING", True)
    # A pooled connection used less than this long ago is handed out without a ping (0: always ping).
    db_pool_ping_idle_s: float = env("DB_POOL_PING_IDLE_S", 1.0, ge=0.0)
    # The hot path's statements as server-side prepared statements (off behind PgBouncer in
    # transaction mode, which hands each statement to any server connection).
    db_prepared_statements: bool = env("DB_PREPARED_STATEMENTS", True)
    db_nullpool: bool = env("DB_NULLPOOL", False)

    secret_key: str | None = env("MCP_SECRET_KEY", repr=False)
    openai_api_key: str | None = env("OPENAI_API_KEY", repr=False)
    openai_base_url: str | None = env("OPENAI_BASE_URL")
    openai_model: str = env("OPENAI_MODEL", "gpt-4o-mini")
    openai_timeout: float = env("OPENAI_TIMEOUT", 30.0, gt=0)
    openai_max_retries: int = env("OPENAI_MAX_RETRIES", 2, ge=0)

    connect_timeout: float = env("MCP_CONNECT_TIMEOUT", 10.0, gt=0)
    call_timeout: float = env("MCP_CALL_TIMEOUT", 60.0, gt=0)
    max_retries: int = env("MCP_MAX_RETRIES", 3, ge=0)
    max_result_bytes: int = env("MCP_MAX_RESULT_BYTES", 1024 * 1024, ge=1024)
    max_argument_bytes: int = env("MCP_MAX_ARGUMENT_BYTES", 256 * 1024, ge=1024)
    session_idle_ttl: float = env("MCP_SESSION_IDLE_TTL", 300.0, gt=0)
    # stdio sessions (one child process each) one worker process keeps; past it the least
    # recently used idle one is closed.
    max_stdio_sessions: int = env("MCP_MAX_STDIO_SESSIONS", 32, ge=1)
    stdio_allowed_commands: Words = env("MCP_STDIO_ALLOWED_COMMANDS", ())
    stdio_default_command: Command = env("MCP_STDIO_DEFAULT_COMMAND", ())
    allowed_hosts: Words = env("MCP_ALLOWED_HOSTS", ())
    # Calls one worker process runs at once over one pooled session (a guard; the limit that
    # holds across the cluster is the next one).
    max_concurrency_per_service: int = env("MCP_MAX_CONCURRENCY_PER_SERVICE", 200, ge=1)
    # Calls to one service at once across every worker and host (a Redis semaphore), unless the
    # service sets params.max_concurrency; a call that finds no slot waits this long, then is
    # re-queued without counting as an attempt.
    service_max_concurrency: int = env("MCP_SERVICE_MAX_CONCURRENCY", 32, ge=1)
    slot_wait_seconds: float = env("MCP_SLOT_WAIT_S", 2.0, ge=0)
    # The tools worker (`mcp-worker worker -Q mcp.tools`): calls in flight per process (threads).
    tools_concurrency: int = env("MCP_TOOLS_CONCURRENCY", 200, ge=1)
    # ... and how many such processes it runs (0: one per core it may use).
    tools_processes: int = env("MCP_TOOLS_PROCESSES", 0, ge=0)

    task_soft_time_limit: int = env("MCP_TASK_SOFT_TIME_LIMIT", 300, ge=1)
    # Unset: the soft limit plus a minute (`task_time_limit`).
    raw_task_time_limit: int | None = env("MCP_TASK_TIME_LIMIT", repr=False)
    report_soft_time_limit: int = env("MCP_REPORT_SOFT_TIME_LIMIT", 600, ge=1)
    raw_report_time_limit: int | None = env("MCP_REPORT_TIME_LIMIT", repr=False)
    # An execution lease runs this long past its last renewal; a live holder renews it every third.
    lease_seconds: float = env("MCP_LEASE_SECONDS", 30.0, ge=3)
    # Redis: how long the message of a dead worker waits before it is restored (live workers
    # refresh theirs four times per timeout), and how often each worker sweeps for such messages.
    visibility_timeout: int = env("MCP_VISIBILITY_TIMEOUT", 60, ge=4)
    unacked_restore_interval: int = env("MCP_UNACKED_RESTORE_INTERVAL", 5, ge=1)
    unacked_restore_throttle: int = env("MCP_UNACKED_RESTORE_THROTTLE", 1, ge=1)
    result_expires: int = env("MCP_RESULT_EXPIRES", 86400, ge=60)
    schedule_max_failures: int = env("MCP_SCHEDULE_MAX_FAILURES", 5, ge=1)
    retention_days: int = env("MCP_RETENTION_DAYS", 90, ge=0)
    # Report delivery (worker.delivery). The SMTP URL may hold a password (repr off): smtp:// uses
    # STARTTLS (required before a password is sent, except to a loopback host), smtps:// TLS.
    smtp_url: str | None = env("MCP_SMTP_URL", repr=False)
    smtp_from: str | None = env("MCP_SMTP_FROM")
    smtp_timeout: float = env("MCP_SMTP_TIMEOUT", 30.0, gt=0)
    # CA certificates the SMTP server's certificate is checked against (default: the system's).
    smtp_ca_file: Folder | None = env("MCP_SMTP_CA_FILE")
    webhook_timeout: float = env("MCP_WEBHOOK_TIMEOUT", 10.0, gt=0)
    # A transient delivery failure (connection refused, timeout, 5xx, 429) is retried this many
    # times, backing off exponentially from the first delay up to the cap (429's Retry-After wins).
    delivery_max_retries: int = env("MCP_DELIVERY_MAX_RETRIES", 5, ge=0)
    delivery_retry_backoff: float = env("MCP_DELIVERY_RETRY_BACKOFF_S", 30.0, ge=0)
    delivery_retry_backoff_max: float = env("MCP_DELIVERY_RETRY_BACKOFF_MAX_S", 1800.0, ge=0)
    log_level: LogLevel = env("LOG_LEVEL", "INFO")
    log_format: LogFormat = env("LOG_FORMAT", "text")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _Environment(settings_cls))

    @model_validator(mode="after")
    def _limits_agree(self) -> Settings:
        budget = self.connect_timeout + self.call_timeout + CALL_MARGIN_S
        if self.task_soft_time_limit <= budget:
            raise ValueError(
                "MCP_TASK_SOFT_TIME_LIMIT must exceed MCP_CONNECT_TIMEOUT + MCP_CALL_TIMEOUT + "
                f"{CALL_MARGIN_S:.0f} s ({self.task_soft_time_limit} <= {self.connect_timeout} + "
                f"{self.call_timeout} + {CALL_MARGIN_S:.0f})"
            )
        for name, hard, soft in (
            ("MCP_TASK_TIME_LIMIT", self.raw_task_time_limit, self.task_soft_time_limit),
            ("MCP_REPORT_TIME_LIMIT", self.raw_report_time_limit, self.report_soft_time_limit),
        ):
            if hard is not None and hard <= soft:
                raise ValueError(f"{name} must be at least {soft + 1}, got {hard}")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from `environ` (default: the process environment).

        Raises:
            ConfigurationError: a value does not parse or breaks its constraint.
        """
        token = _environ.set(environ)
        try:
            # The values come from the sources above, not from keyword arguments.
            settings = cls()  # type: ignore[call-arg]
        except ValidationError as exc:
            raise ConfigurationError("; ".join(_message(error) for error in exc.errors())) from None
        finally:
            _environ.reset(token)
        _ = settings.database_url  # a malformed DATABASE_URL is refused here, not at first use
        return settings

    @property
    def database_is_embedded(self) -> bool:
        return not self.raw_database_url.strip()

    @property
    def database_url(self) -> str:
        """DATABASE_URL on the synchronous driver, else the embedded SQLite file."""
        if self.database_is_embedded:
            return f"sqlite:///{self.data_dir / 'mcp-worker.sqlite3'}"
        return normalize_database_url(self.raw_database_url.strip())

    @property
    def broker_is_embedded(self) -> bool:
        return not self.raw_broker_url.strip()

    @property
    def broker_url(self) -> str:
        # The file transport ignores the host; naming one keeps Kombu from warning about it.
        return "filesystem://localhost/" if self.broker_is_embedded else self.raw_broker_url.strip()

    @property
    def result_backend(self) -> str:
        if self.raw_result_backend.strip():
            return self.raw_result_backend.strip()
        return f"file://{self.data_dir / 'results'}" if self.broker_is_embedded else self.broker_url

    @property
    def task_time_limit(self) -> int:
        return self.raw_task_time_limit or self.task_soft_time_limit + 60

    @property
    def report_time_limit(self) -> int:
        return self.raw_report_time_limit or self.report_soft_time_limit + 60


_UNITS = {"greater_than_equal": "at least", "greater_than": "more than"}


def _message(error: Mapping[str, Any]) -> str:
    """One pydantic error as the variable's own message."""
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    kind, raw, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "bool_parsing":
        return f"{name} must be true or false, got {raw!r}"
    if kind in ("int_parsing", "int_from_float"):
        return f"{name} must be an integer, got {raw!r}"
    if kind == "float_parsing":
        return f"{name} must be a number, got {raw!r}"
    if kind == "greater_than" and ctx.get("gt") == 0:
        return f"{name} must be positive, got {raw}"
    if kind == "greater_than_equal" and ctx.get("ge") == 0 and isinstance(ctx.get("ge"), float):
        return f"{name} must be zero or more, got {raw}"
    if kind in _UNITS:
        return f"{name} must be {_UNITS[kind]} {ctx.get('ge', ctx.get('gt'))}, got {raw}"
    if kind == "literal_error":
        return f"{name} must be {ctx.get('expected', '').replace(chr(39), '')}, got {raw!r}"
    return f"{name}: {error['msg']}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget the cached settings so the next `get_settings()` reads the environment again."""
    get_settings.cache_clear()
