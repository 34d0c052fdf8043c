"""The `mcp_services` table: saving, listing and reading service rows, their secrets encrypted.

Reads go through `LOOKUP`, one Core select whose bind parameters the execution claim shares, so
the claim can fetch the service in the same round trip; `from_rows` turns what it returned into a
`ServiceConfig`, validating and decrypting a row once per content (`_validated`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from worker.db.models import McpService
from worker.errors import ConfigurationError
from worker.services import crypto
from worker.services.config import GLOBAL_USER, ServiceConfig, pick_for_user, stdio_command, validate_record
from worker.settings import Settings, get_settings


def row_to_record(row: McpService | Mapping[str, Any]) -> dict[str, Any]:
    """A stored row (an ORM object or a Core row's mapping) as a record, its secrets decrypted."""
    keys = get_settings().secret_key
    fields = row if isinstance(row, Mapping) else {name: getattr(row, name) for name in _LOOKUP_COLUMNS}
    return {
        **{name: fields[name] for name in ("id", "user_id", "desc", "interaction_mode", "url", "endpoint")},
        "api_key": crypto.decrypt(fields["api_key"], keys),
        "params": fields["params"] or {},
        "auth": crypto.decrypt_auth(fields["auth"] or {}, keys),
    }


def from_rows(rows: Iterable[Sequence[Any]], user_id: str, desc: str) -> ServiceConfig:
    """`resolve` on rows already fetched with `LOOKUP` (its columns, in its order).

    Raises:
        ServiceNotFound: neither the user's nor the global row is among them.
        InvalidService: the row cannot be used as written.
    """
    settings = get_settings()
    return pick_for_user((_validated(row, settings) for row in rows), user_id, desc)


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
    config = validate_record(row_to_record(dict(zip(_LOOKUP_COLUMNS, row, strict=True))), settings)
    with _cache_lock:
        _cache[key] = config
        if len(_cache) > VALIDATED_CACHE_SIZE:
            _cache.popitem(last=False)
    return config


def save_service(session: Session, record: Mapping[str, Any], *, check_command: bool = True) -> ServiceConfig:
    """Validate and insert or update (by user and desc) one service row.

    A stdio service must name (or default to) a command the operator allowed; `check_command=False`
    skips that for documentation rows such as the seed's samples (the call still refuses it).

    Raises:
        InvalidService: the record does not validate (an OAuth private key that does not parse
            included); nothing is written.
        CommandNotAllowed: a stdio command outside MCP_STDIO_ALLOWED_COMMANDS; nothing is written.
    """
    config = validate_record(record)
    if config.mode == "stdio" and check_command:
        stdio_command(config, get_settings())
    private_key = config.auth.get("private_key") if config.auth_type == "oauth" else None
    if private_key:
        from worker.oauth.discovery import check_private_key

        check_private_key(private_key)
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
    return validate_record(row_to_record(row))


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
