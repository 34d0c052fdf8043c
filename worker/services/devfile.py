"""The development-mode services file (`DEVELOPMENT_MODE=true`, `MCP_CONFIG_FILE`).

The same records as `mcp_services`, as JSON, validated into the same `ServiceConfig`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from worker.errors import ConfigurationError, InvalidService
from worker.services.config import ServiceConfig, validate_record
from worker.settings import Settings


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
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
