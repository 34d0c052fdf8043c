"""One service record, whatever its source: the typed `ServiceConfig` and its validation.

SQL-free (no SQLAlchemy, no cryptography): the MCP runtime and the producers may import it. A
record is validated on the way in, so a bad one is refused when it is saved (or when the services
file is read), not at first use. Also here: the limits a call derives from its service
(`timeouts`), and the stdio policy (`stdio_command`: which programs a service may start).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from worker.errors import CommandNotAllowed, InvalidService, ServiceNotFound
from worker.oauth.settings import check_oauth, key_fragments
from worker.settings import CALL_MARGIN_S, Settings, get_settings
from worker.validation import DESC_MAX, USER_ID_MAX

GLOBAL_USER = "global"

Mode = Literal["stdio", "sse", "streamable_http"]
MODE_ALIASES: dict[str, Mode] = {
    "stdio": "stdio",
    "sse": "sse",
    "streamable_http": "streamable_http",
    "streamable-http": "streamable_http",
    "streamful_http": "streamable_http",  # the seed's spelling
    "http": "streamable_http",
}
AUTH_TYPES = frozenset({"none", "api_key", "bearer", "oauth"})
# Keys of `auth` whose values are secrets: encrypted at rest, masked in output, redacted in text.
SECRET_AUTH_KEYS = ("value", "token", "password", "client_secret", "private_key")

# Keys of `params` that configure the worker rather than the tool; they never reach the server.
RESERVED_PARAMS = frozenset({"connect_timeout", "call_timeout", "max_concurrency", "report_tool", "refine"})

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def normalize_mode(raw: object) -> Mode:
    """Map a stored `interaction_mode` (aliases included) onto one of the three transports.

    Raises:
        InvalidService: the mode is not one we speak.
    """
    mode = MODE_ALIASES.get(str(raw).strip().lower()) if isinstance(raw, str) else None
    if mode is None:
        allowed = ", ".join(sorted(MODE_ALIASES))
        raise InvalidService(f"interaction_mode {raw!r} is not supported; use one of: {allowed}")
    return mode


def mask_secret(secret: str | None) -> str:
    """A form of a secret that is safe to print: its last 4 characters at most."""
    if not secret:
        return ""
    if len(secret) <= 8:
        return "****"
    return "****" + secret[-4:]


@dataclass(frozen=True)
class ServiceConfig:
    """One usable service record, whatever its source."""

    user_id: str
    desc: str
    mode: Mode
    url: str | None
    endpoint: str | None
    api_key: str = field(repr=False)
    params: Mapping[str, Any] = field(default_factory=dict)
    auth: Mapping[str, Any] = field(default_factory=dict, repr=False)
    id: int | None = None

    @property
    def auth_type(self) -> str:
        return str(self.auth.get("type", "api_key"))

    @property
    def tool_defaults(self) -> dict[str, Any]:
        """The default tool arguments: `params` without the worker's reserved keys."""
        return {k: v for k, v in self.params.items() if k not in RESERVED_PARAMS}

    def secrets(self) -> list[str]:
        """Every secret value this record carries (for redaction), a private key's lines included."""
        found = [self.api_key] if self.api_key else []
        found += [str(v) for k, v in self.auth.items() if k in SECRET_AUTH_KEYS and v]
        return found + key_fragments(self.auth)

    def credential_hash(self) -> str:
        """A digest of the credentials, so pooled sessions are never shared across keys."""
        material = json.dumps([self.api_key, dict(self.auth)], sort_keys=True, default=str)
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """The record as safe to print: api key masked, auth secrets masked."""
        auth = {k: (mask_secret(str(v)) if k in SECRET_AUTH_KEYS else v) for k, v in self.auth.items()}
        return {
            "id": self.id,
            "user_id": self.user_id,
            "desc": self.desc,
            "interaction_mode": self.mode,
            "url": self.url,
            "endpoint": self.endpoint,
            "api_key": mask_secret(self.api_key),
            "params": dict(self.params),
            "auth": auth,
        }


@dataclass(frozen=True)
class Timeouts:
    """The limits of one call to a service: settings' defaults, overridden by its `params`/`auth`."""

    connect: float
    call: float

    @property
    def bound(self) -> float:
        """The longest one call may block its caller: connect + call, plus the runtime's margin."""
        return self.connect + self.call + CALL_MARGIN_S


def _timeout_overrides(sources: Iterable[Mapping[str, Any]], where: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for key in ("connect_timeout", "call_timeout"):
        for source in sources:
            value = source.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problem = f"{key} must be a positive number of seconds"
                raise InvalidService(f"{where}: {problem}" if where else problem)
            found[key] = float(value)
    return found


def timeouts_for(config: ServiceConfig, settings: Settings) -> Timeouts:
    """The one place a call's timeouts are decided: the service's own, else the settings'."""
    found = _timeout_overrides((config.params, config.auth), f"service {config.desc!r}")
    return Timeouts(
        found.get("connect_timeout", settings.connect_timeout),
        found.get("call_timeout", settings.call_timeout),
    )


def max_concurrency_of(config: ServiceConfig, settings: Settings) -> int:
    """How many calls to the service may run at once across every worker: its
    `params.max_concurrency`, else MCP_SERVICE_MAX_CONCURRENCY.

    Raises:
        InvalidService: the service's own value is not a positive whole number.
    """
    return _concurrency(config.params, f"service {config.desc!r}: ") or settings.service_max_concurrency


def _concurrency(params: Mapping[str, Any], where: str) -> int | None:
    value = params.get("max_concurrency")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidService(f"{where}max_concurrency must be a whole number of calls, at least 1")
    return value


def _text(value: object, key: str, *, required: bool, max_len: int = 255) -> str | None:
    if value is None or value == "":
        if required:
            raise ValueError(f"{key!r} is required and must be a non-empty string")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(
            f"{key!r} is required and must be a non-empty string" if required else f"{key!r} must be a string"
        )
    if len(value) > max_len:
        raise ValueError(f"{key!r} is longer than {max_len} characters")
    return value


def _json_object(value: object, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{key!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} must be a JSON object")
    return value


class ServiceRecord(BaseModel):
    """A raw service record (a row, a JSON object, CLI options) as validated: the one set of rules
    every source goes through. `validate_record` turns it into a `ServiceConfig`."""

    model_config = ConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)

    user_id: str
    desc: str
    interaction_mode: Mode
    url: str | None = None
    endpoint: str | None = None
    api_key: str
    params: dict[str, Any] = {}
    auth: dict[str, Any] = {}
    id: int | None = None

    @field_validator("user_id", "desc", mode="before")
    @classmethod
    def _name(cls, value: object, info: ValidationInfo) -> str | None:
        return _text(
            value,
            str(info.field_name),
            required=True,
            max_len=USER_ID_MAX if info.field_name == "user_id" else DESC_MAX,
        )

    @field_validator("url", "endpoint", mode="before")
    @classmethod
    def _optional(cls, value: object, info: ValidationInfo) -> str | None:
        return _text(value, str(info.field_name), required=False)

    @field_validator("interaction_mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> Mode:
        try:
            return normalize_mode(value)
        except InvalidService as exc:
            raise ValueError(f"{_UNPREFIXED}{exc}") from None

    @field_validator("api_key", mode="before")
    @classmethod
    def _key(cls, value: object) -> str:
        if not isinstance(value, str) or len(value) > 255:
            raise ValueError("'api_key' is required (a string of at most 255 characters)")
        return value

    @field_validator("params", "auth", mode="before")
    @classmethod
    def _object(cls, value: object, info: ValidationInfo) -> dict[str, Any]:
        return _json_object(value, str(info.field_name))

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: object) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @field_validator("auth")
    @classmethod
    def _auth(cls, auth: dict[str, Any]) -> dict[str, Any]:
        auth_type = auth.get("type", "api_key")
        if not isinstance(auth_type, str) or auth_type not in AUTH_TYPES:
            raise ValueError(f"auth type {auth_type!r} is not one of {', '.join(sorted(AUTH_TYPES))}")
        header = auth.get("header")
        if header is not None and (not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9-]+", header)):
            raise ValueError(f"auth header {header!r} is not a valid HTTP header name")
        env_map = auth.get("env", {})
        if not isinstance(env_map, dict) or not all(
            isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in env_map.items()
        ):
            raise ValueError("auth.env must map environment variable names to strings")
        if auth_type == "oauth":
            check_oauth(auth)
        return auth

    @model_validator(mode="after")
    def _reachable(self, info: ValidationInfo) -> ServiceRecord:
        settings: Settings = (info.context or {})["settings"]
        try:
            found = _timeout_overrides((self.params, self.auth), "")
            _concurrency(self.params, "")
        except InvalidService as exc:
            raise ValueError(str(exc)) from None
        timeouts = Timeouts(
            found.get("connect_timeout", settings.connect_timeout),
            found.get("call_timeout", settings.call_timeout),
        )
        if timeouts.bound >= settings.task_soft_time_limit:
            raise ValueError(
                f"connect_timeout + call_timeout ({timeouts.connect + timeouts.call:.0f} s) must stay below the "
                f"task's soft time limit (MCP_TASK_SOFT_TIME_LIMIT={settings.task_soft_time_limit} s) minus "
                f"{CALL_MARGIN_S:.0f} s"
            )
        if self.interaction_mode == "stdio" and self.auth.get("type") == "oauth":
            raise ValueError("auth type 'oauth' needs an HTTP transport (sse or streamable_http), not stdio")
        if self.interaction_mode == "stdio":
            if self.url is not None:
                try:
                    argv = shlex.split(self.url)
                except ValueError as exc:
                    raise ValueError(f"stdio command line does not parse: {exc}") from None
                if not argv:
                    raise ValueError("stdio command line is empty")
        elif self.url is None:
            raise ValueError(f"an {self.interaction_mode} service needs a url")
        else:
            check_http_url(self.url, settings)
        return self


# Marks a message that is complete on its own (it names the field itself).
_UNPREFIXED = "\x00"


def check_http_url(url: str, settings: Settings) -> None:
    """Refuse (ValueError) a URL that is not http(s) with a host, or whose host MCP_ALLOWED_HOSTS omits."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url {url!r} must be an http(s) URL with a host")
    if settings.allowed_hosts and parts.hostname not in settings.allowed_hosts:
        raise ValueError(f"host {parts.hostname!r} is not in MCP_ALLOWED_HOSTS")


def validate_record(record: Mapping[str, Any], settings: Settings | None = None) -> ServiceConfig:
    """Turn a raw record (a row, a JSON object, CLI options) into a `ServiceConfig`.

    Raises:
        InvalidService: a field is missing, of the wrong type, or not allowed (the first problem,
            prefixed with the service it is about).
    """
    settings = settings or get_settings()
    where = f"service {record.get('user_id')!r}/{record.get('desc')!r}"
    try:
        # Every field present (a missing one as None), so each gets its own message.
        fields = {name: record.get(name) for name in ServiceRecord.model_fields}
        valid = ServiceRecord.model_validate(fields, context={"settings": settings})
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = str((first.get("ctx") or {}).get("error", first["msg"]))
        if problem.startswith(_UNPREFIXED):
            raise InvalidService(problem[len(_UNPREFIXED) :]) from None
        raise InvalidService(f"{where}: {problem}") from None
    return ServiceConfig(
        user_id=valid.user_id,
        desc=valid.desc,
        mode=valid.interaction_mode,
        url=valid.url,
        endpoint=valid.endpoint,
        api_key=valid.api_key,
        params=valid.params,
        auth=valid.auth,
        id=valid.id,
    )


def pick_for_user(candidates: Iterable[ServiceConfig], user_id: str, desc: str) -> ServiceConfig:
    """The candidate named `desc` that `user_id` sees: their own, else the global one.

    Raises:
        ServiceNotFound: neither is among the candidates.
    """
    by_user = {c.user_id: c for c in candidates if c.desc == desc}
    found = by_user.get(user_id) or by_user.get(GLOBAL_USER)
    if found is None:
        raise ServiceNotFound(user_id, desc)
    return found


def stdio_command(config: ServiceConfig, settings: Settings) -> tuple[str, ...]:
    """The argv a stdio service runs: its url split like a shell would, else the default command.

    Raises:
        InvalidService: no command at all, or a url that does not parse.
        CommandNotAllowed: the executable is not in MCP_STDIO_ALLOWED_COMMANDS.
    """
    return _stdio_argv(
        config.url, config.desc, settings.stdio_default_command, settings.stdio_allowed_commands
    )


# Pure, and asked on every call (the pool key): split once per command line, not once per call.
@functools.lru_cache(maxsize=1024)
def _stdio_argv(
    url: str | None, desc: str, default_command: tuple[str, ...], allowed: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        argv = shlex.split(url) if url else list(default_command)
    except ValueError as exc:
        raise InvalidService(f"stdio command line of {desc!r} does not parse: {exc}") from None
    if not argv:
        raise InvalidService(f"service {desc!r} has no command; set its url or MCP_STDIO_DEFAULT_COMMAND")
    executable = argv[0]
    if executable not in allowed and os.path.basename(executable) not in allowed:
        raise CommandNotAllowed(
            f"stdio command {executable!r} is not allowed; add it to MCP_STDIO_ALLOWED_COMMANDS to run it"
        )
    return tuple(argv)
