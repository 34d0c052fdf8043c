"""Encryption at rest for service credentials (`api_key` and secret `auth` values).

With `MCP_SECRET_KEY` set (one Fernet key, or several separated by commas: the first encrypts,
all decrypt, so keys can be rotated), new and updated `mcp_services` rows store their secrets as
`fernet:<token>`; `mcp-worker services reencrypt` migrates existing rows. Plain and encrypted
rows can coexist, so turning encryption on needs no downtime. Without a key the worker warns at
start and stores secrets as given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from worker.errors import ConfigurationError, InvalidService
from worker.services.config import SECRET_AUTH_KEYS

logger = logging.getLogger(__name__)

PREFIX = "fernet:"


@lru_cache(maxsize=4)
def _cipher(keys: str) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.strip().encode()) for k in keys.split(",") if k.strip()])
    except (ValueError, TypeError):
        raise ConfigurationError(
            "MCP_SECRET_KEY must be one or more Fernet keys separated by commas "
            "(make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
        ) from None


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def encrypt(value: str, keys: str | None) -> str:
    """`value` encrypted with the first key (re-encrypted if it already was), or as is without keys."""
    if not keys or not value:
        return value
    plain = decrypt(value, keys)
    return PREFIX + _cipher(keys).encrypt(plain.encode()).decode()


def decrypt(value: str, keys: str | None) -> str:
    """The plain text of a stored secret (plain values pass through).

    Raises:
        InvalidService: the value is encrypted and no key (or a wrong key) is configured.
    """
    if not is_encrypted(value):
        return value
    if not keys:
        raise InvalidService("this service's credentials are encrypted but MCP_SECRET_KEY is not set")
    try:
        return _cipher(keys).decrypt(value[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise InvalidService(
            "this service's credentials do not decrypt with MCP_SECRET_KEY (wrong key?)"
        ) from None


def encrypt_auth(auth: Mapping[str, Any], keys: str | None) -> dict[str, Any]:
    return {
        k: (encrypt(v, keys) if k in SECRET_AUTH_KEYS and isinstance(v, str) else v) for k, v in auth.items()
    }


def decrypt_auth(auth: Mapping[str, Any], keys: str | None) -> dict[str, Any]:
    return {
        k: (decrypt(v, keys) if k in SECRET_AUTH_KEYS and isinstance(v, str) else v) for k, v in auth.items()
    }


def warn_if_unencrypted(keys: str | None) -> None:
    if not keys:
        logger.warning(
            "MCP_SECRET_KEY is not set: service api keys are stored unencrypted in mcp_services; "
            "set it and run `mcp-worker services reencrypt`"
        )
