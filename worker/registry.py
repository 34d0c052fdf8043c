"""Service registry: which MCP server a user's service name means, and with which credentials.

`resolve(user_id, desc)` returns the user's own row, else the `global` row, else raises
`ServiceNotFound`. Records come from `mcp_services`, or from a JSON file when
`DEVELOPMENT_MODE=true`; both become the same frozen `ServiceConfig`, validated on the way in,
so a bad record is refused when it is saved (or when the file is read), not at first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from worker import crypto
from worker.errors import ConfigurationError, InvalidService, ServiceNotFound
from worker.models import McpService
from worker.settings import CALL_MARGIN_S, Settings, get_settings

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

# Keys of `params` that configure the worker rather than the tool; they never reach the server.
RESERVED_PARAMS = frozenset({"connect_timeout", "call_timeout", "report_tool", "refine"})

USER_ID_MAX = 50
DESC_MAX = 255
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


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
        """Every secret value this record carries (for redaction)."""
        found = [self.api_key] if self.api_key else []
        found += [str(v) for k, v in self.auth.items() if k in ("value", "token", "password") and v]
        return found

    def credential_hash(self) -> str:
        """A digest of the credentials, so pooled sessions are never shared across keys."""
        material = json.dumps([self.api_key, dict(self.auth)], sort_keys=True, default=str)
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """The record as safe to print: api key masked, auth secrets masked."""
        auth = {
            k: (mask_secret(str(v)) if k in ("value", "token", "password") else v)
            for k, v in self.auth.items()
        }
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


def _require_str(record: Mapping[str, Any], key: str, max_len: int, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidService(f"{where}: {key!r} is required and must be a non-empty string")
    if len(value) > max_len:
        raise InvalidService(f"{where}: {key!r} is longer than {max_len} characters")
    return value


def _optional_str(record: Mapping[str, Any], key: str, where: str, max_len: int = 255) -> str | None:
    value = record.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidService(f"{where}: {key!r} must be a string")
    if len(value) > max_len:
        raise InvalidService(f"{where}: {key!r} is longer than {max_len} characters")
    return value


def _json_object(record: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = record.get(key)
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidService(f"{where}: {key!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidService(f"{where}: {key!r} must be a JSON object")
    return value


def _check_http_url(url: str, where: str, settings: Settings) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidService(f"{where}: url {url!r} must be an http(s) URL with a host")
    if settings.allowed_hosts and parts.hostname not in settings.allowed_hosts:
        raise InvalidService(f"{where}: host {parts.hostname!r} is not in MCP_ALLOWED_HOSTS")


def validate_record(record: Mapping[str, Any], settings: Settings | None = None) -> ServiceConfig:
    """Turn a raw record (a row, a JSON object, CLI options) into a `ServiceConfig`.

    Raises:
        InvalidService: a field is missing, of the wrong type, or not allowed.
    """
    settings = settings or get_settings()
    where = f"service {record.get('user_id')!r}/{record.get('desc')!r}"
    user_id = _require_str(record, "user_id", USER_ID_MAX, where)
    desc = _require_str(record, "desc", DESC_MAX, where)
    mode = normalize_mode(record.get("interaction_mode"))
    url = _optional_str(record, "url", where)
    endpoint = _optional_str(record, "endpoint", where)
    api_key = record.get("api_key")
    if not isinstance(api_key, str) or len(api_key) > 255:
        raise InvalidService(f"{where}: 'api_key' is required (a string of at most 255 characters)")
    params = _json_object(record, "params", where)
    auth = _json_object(record, "auth", where)

    auth_type = auth.get("type", "api_key")
    if auth_type not in AUTH_TYPES:
        raise InvalidService(
            f"{where}: auth type {auth_type!r} is not one of {', '.join(sorted(AUTH_TYPES))}"
        )
    header = auth.get("header")
    if header is not None and (not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9-]+", header)):
        raise InvalidService(f"{where}: auth header {header!r} is not a valid HTTP header name")
    env_map = auth.get("env", {})
    if not isinstance(env_map, dict) or not all(
        isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in env_map.items()
    ):
        raise InvalidService(f"{where}: auth.env must map environment variable names to strings")
    timeouts = {"connect_timeout": settings.connect_timeout, "call_timeout": settings.call_timeout}
    for key in timeouts:
        for source in (params, auth):
            value = source.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidService(f"{where}: {key} must be a positive number of seconds")
            timeouts[key] = float(value)
    if sum(timeouts.values()) + CALL_MARGIN_S >= settings.task_soft_time_limit:
        raise InvalidService(
            f"{where}: connect_timeout + call_timeout ({sum(timeouts.values()):.0f} s) must stay below the task's "
            f"soft time limit (MCP_TASK_SOFT_TIME_LIMIT={settings.task_soft_time_limit} s) minus {CALL_MARGIN_S:.0f} s"
        )

    if mode == "stdio":
        if url is not None:
            try:
                argv = shlex.split(url)
            except ValueError as exc:
                raise InvalidService(f"{where}: stdio command line does not parse: {exc}") from None
            if not argv:
                raise InvalidService(f"{where}: stdio command line is empty")
    else:
        if url is None:
            raise InvalidService(f"{where}: an {mode} service needs a url")
        _check_http_url(url, where, settings)

    rid = record.get("id")
    return ServiceConfig(
        user_id=user_id,
        desc=desc,
        mode=mode,
        url=url,
        endpoint=endpoint,
        api_key=api_key,
        params=params,
        auth=auth,
        id=rid if isinstance(rid, int) else None,
    )


def _row_to_record(row: McpService | Mapping[str, Any]) -> dict[str, Any]:
    """A stored row (an ORM object or a Core row's mapping) as a record, its secrets decrypted."""
    keys = get_settings().secret_key
    fields = row if isinstance(row, Mapping) else {name: getattr(row, name) for name in _LOOKUP_COLUMNS}
    return {
        **{name: fields[name] for name in ("id", "user_id", "desc", "interaction_mode", "url", "endpoint")},
        "api_key": crypto.decrypt(fields["api_key"], keys),
        "params": fields["params"] or {},
        "auth": crypto.decrypt_auth(fields["auth"] or {}, keys),
    }


# ---------------------------------------------------------------- the JSON file (development mode)


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1) or m.group(2), m.group(0)), value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def load_config_file(path: Path, settings: Settings | None = None) -> list[ServiceConfig]:
    """Read the development-mode services file.

    The file is a list of service objects, or an object keyed by user id whose values are lists
    of service objects (without `user_id`). `$VAR` and `${VAR}` are expanded from the environment.

    Raises:
        ConfigurationError: the file is missing, not JSON, or an entry is invalid (the message
            names the file and the entry).
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"MCP_CONFIG_FILE {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None

    entries: list[tuple[str, Any]] = []
    if isinstance(document, list):
        entries = [(f"entry {i}", item) for i, item in enumerate(document)]
    elif isinstance(document, dict):
        for user_id, items in document.items():
            if not isinstance(items, list):
                raise ConfigurationError(f"{path}: the value for user {user_id!r} must be a list of services")
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    item = {"user_id": user_id, **item}
                entries.append((f"user {user_id!r} entry {i}", item))
    else:
        raise ConfigurationError(f"{path}: expected a list of services or an object keyed by user id")

    services = []
    seen: set[tuple[str, str]] = set()
    for where, item in entries:
        if not isinstance(item, dict):
            raise ConfigurationError(f"{path}: {where} must be a JSON object")
        try:
            config = validate_record(_expand(item), settings)
        except InvalidService as exc:
            raise ConfigurationError(f"{path}: {where}: {exc}") from None
        key = (config.user_id, config.desc)
        if key in seen:
            raise ConfigurationError(
                f"{path}: {where}: duplicate service {config.desc!r} for {config.user_id!r}"
            )
        seen.add(key)
        services.append(config)
    return services


# ---------------------------------------------------------------- lookups


def _pick(candidates: Iterable[ServiceConfig], user_id: str, desc: str) -> ServiceConfig:
    by_user = {c.user_id: c for c in candidates if c.desc == desc}
    found = by_user.get(user_id) or by_user.get(GLOBAL_USER)
    if found is None:
        raise ServiceNotFound(user_id, desc)
    return found


def resolve(user_id: str, desc: str, session: Session | Connection | None = None) -> ServiceConfig:
    """The service `desc` as `user_id` sees it: their own row, else the global one.

    One round trip; a row this process has already validated and decrypted, unchanged since, is
    not validated or decrypted again (see `_validated`).

    Raises:
        ServiceNotFound: neither exists.
        InvalidService: the stored row cannot be used as written.
        ConfigurationError: development mode and the services file is bad.
    """
    settings = get_settings()
    if settings.development_mode:
        if settings.config_file is None:
            raise ConfigurationError("DEVELOPMENT_MODE=true needs MCP_CONFIG_FILE")
        return _pick(load_config_file(settings.config_file, settings), user_id, desc)
    if session is None:
        from worker.db import session_scope

        with session_scope() as own:
            return resolve(user_id, desc, own)
    return from_rows(session.execute(LOOKUP, {"b_user_id": user_id, "b_service": desc}).all(), user_id, desc)


def from_rows(rows: Iterable[Sequence[Any]], user_id: str, desc: str) -> ServiceConfig:
    """`resolve` on rows already fetched with `LOOKUP` (its columns, in its order).

    Raises:
        ServiceNotFound: neither the user's nor the global row is among them.
        InvalidService: the row cannot be used as written.
    """
    settings = get_settings()
    return _pick((_validated(row, settings) for row in rows), user_id, desc)


_services = cast(sa.Table, McpService.__table__)
_LOOKUP_COLUMNS = (
    "id",
    "user_id",
    "desc",
    "interaction_mode",
    "url",
    "endpoint",
    "api_key",
    "params",
    "auth",
)
# The rows `resolve` chooses from: Core, built once (the ORM's per-call statement building and row
# hydration cost more than the query). Bind parameters `b_user_id` and `b_service`, the names the
# execution claim uses, so the claim can embed it and find the service in the same round trip.
LOOKUP = sa.select(*(_services.c[name] for name in _LOOKUP_COLUMNS)).where(
    _services.c.desc == sa.bindparam("b_service"),
    sa.or_(_services.c.user_id == sa.bindparam("b_user_id"), _services.c.user_id == GLOBAL_USER),
)
# Validated and decrypted rows, keyed by everything read from the row (the ciphertext, not the
# secret), for the settings they were validated under. Any change to a row is a new key, so a
# cached entry is never stale; the oldest entries go first when the cache is full.
VALIDATED_CACHE_SIZE = 1024
_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[Any, ...], ServiceConfig] = OrderedDict()
_cache_settings: list[Settings | None] = [None]


def _validated(row: Sequence[Any], settings: Settings) -> ServiceConfig:
    """The row as a `ServiceConfig`: validated and decrypted once per content and settings."""
    key = tuple(
        json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict | list) else value
        for value in row
    )
    with _cache_lock:
        if _cache_settings[0] is not settings:
            _cache.clear()
            _cache_settings[0] = settings
        config = _cache.get(key)
        if config is not None:
            _cache.move_to_end(key)
            return config
    config = validate_record(_row_to_record(dict(zip(_LOOKUP_COLUMNS, row, strict=True))), settings)
    with _cache_lock:
        _cache[key] = config
        if len(_cache) > VALIDATED_CACHE_SIZE:
            _cache.popitem(last=False)
    return config


def list_services(session: Session | None, user_id: str | None = None) -> list[ServiceConfig]:
    """Services visible to `user_id` (their own and the global ones), or all of them."""
    settings = get_settings()
    if settings.development_mode:
        if settings.config_file is None:
            raise ConfigurationError("DEVELOPMENT_MODE=true needs MCP_CONFIG_FILE")
        configs = load_config_file(settings.config_file, settings)
    else:
        assert session is not None
        query = sa.select(McpService).order_by(McpService.user_id, McpService.desc)
        if user_id is not None:
            query = query.where(McpService.user_id.in_([user_id, GLOBAL_USER]))
        configs = [validate_record(_row_to_record(r), settings) for r in session.scalars(query)]
    if user_id is None:
        return configs
    own = {c.desc for c in configs if c.user_id == user_id}
    return [c for c in configs if c.user_id == user_id or (c.user_id == GLOBAL_USER and c.desc not in own)]


def save_service(session: Session, record: Mapping[str, Any], *, check_command: bool = True) -> ServiceConfig:
    """Validate and insert or update (by user and desc) one service row.

    A stdio service must name (or default to) a command the operator allowed; `check_command=False`
    skips that for documentation rows such as the seed's samples (the call still refuses it).

    Raises:
        InvalidService: the record does not validate; nothing is written.
        CommandNotAllowed: a stdio command outside MCP_STDIO_ALLOWED_COMMANDS; nothing is written.
    """
    config = validate_record(record)
    if config.mode == "stdio" and check_command:
        from worker.mcp.transports import stdio_command

        stdio_command(config, get_settings())
    row = session.scalars(
        sa.select(McpService).where(McpService.user_id == config.user_id, McpService.desc == config.desc)
    ).one_or_none()
    if row is None:
        row = McpService(user_id=config.user_id, desc=config.desc)
        session.add(row)
    row.interaction_mode = str(record["interaction_mode"]).strip()
    row.url = config.url
    row.endpoint = config.endpoint
    keys = get_settings().secret_key
    row.api_key = crypto.encrypt(config.api_key, keys)
    row.params = dict(config.params)
    row.auth = crypto.encrypt_auth(config.auth, keys)
    session.flush()
    return validate_record(_row_to_record(row))


def reencrypt_all(session: Session) -> int:
    """Encrypt every row's secrets with the current first key of MCP_SECRET_KEY; returns the count.

    Raises:
        ConfigurationError: MCP_SECRET_KEY is not set.
        InvalidService: a row is encrypted with a key that is no longer configured.
    """
    keys = get_settings().secret_key
    if not keys:
        raise ConfigurationError("set MCP_SECRET_KEY before re-encrypting")
    count = 0
    for row in session.scalars(sa.select(McpService).with_for_update()):
        row.api_key = crypto.encrypt(row.api_key, keys)
        row.auth = crypto.encrypt_auth(row.auth or {}, keys)
        count += 1
    return count


def remove_service(session: Session, user_id: str, desc: str) -> bool:
    """Delete one service row; True when a row was deleted."""
    result = session.execute(
        sa.delete(McpService).where(McpService.user_id == user_id, McpService.desc == desc)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
