"""An `oauth` service's OAuth settings: `OAuthClient`, read from the service's `auth` object, and
the validation of that object.

SQL-free and free of the SDK and of cryptography, like `worker.services.config`, which uses it
(so this module knows a `ServiceConfig` only by the fields it reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from worker.errors import InvalidService


class _Service(Protocol):
    """What `oauth_client` reads of a `ServiceConfig` (which imports this module)."""

    @property
    def desc(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def auth(self) -> Mapping[str, Any]: ...
    @property
    def auth_type(self) -> str: ...


# How an `oauth` service authenticates to the token endpoint (RFC 6749 2.3.1, RFC 7523 2.2).
OAUTH_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
# Algorithms a private key may sign the client assertion with (what PyJWT signs with a PEM key).
OAUTH_SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


@dataclass(frozen=True)
class OAuthClient:
    """An `oauth` service's client: who it is, how it proves it, and where it gets its tokens."""

    client_id: str
    method: str
    client_secret: str | None = field(repr=False)
    private_key: str | None = field(repr=False)
    signing_algorithm: str
    key_id: str | None
    issuer: str | None
    token_endpoint: str | None
    scopes: str
    """Requested scopes, sorted and space separated ("" for none): part of the token's key."""
    server_url: str


def oauth_scopes(raw: object) -> str:
    """`auth.scope` (a space-separated string or a list of strings) as sorted, unique, space separated."""
    if raw is None:
        return ""
    items = raw.split() if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise ValueError("auth.scope must be a space-separated string or a list of strings")
    return " ".join(sorted({i.strip() for i in items}))


def oauth_client(config: _Service) -> OAuthClient:
    """The OAuth client of an `oauth` service.

    Raises:
        InvalidService: the service is not `oauth`, or has no client id or no credential yet
            (the seed's sample row, until an operator sets them).
    """
    desc, auth, url = config.desc, config.auth, config.url
    if config.auth_type != "oauth" or url is None:
        raise InvalidService(f"service {desc!r} is not an OAuth service over HTTP")
    client_id = auth.get("client_id")
    secret, key = auth.get("client_secret"), auth.get("private_key")
    if not client_id or not (secret or key):
        raise InvalidService(
            f"service {desc!r} uses OAuth but has no auth.client_id and client secret (or private "
            'key) yet; set them with `mcp-worker services add ... --auth \'{"type": "oauth", '
            '"client_id": "..."}\' --client-secret-file FILE`'
        )
    method = auth.get("token_endpoint_auth_method") or ("private_key_jwt" if key else "client_secret_basic")
    return OAuthClient(
        client_id=str(client_id),
        method=str(method),
        client_secret=secret,
        private_key=key,
        signing_algorithm=str(auth.get("signing_algorithm") or "RS256"),
        key_id=auth.get("key_id"),
        issuer=auth.get("issuer"),
        token_endpoint=auth.get("token_endpoint"),
        scopes=oauth_scopes(auth.get("scope")),
        server_url=url,
    )


def key_fragments(auth: Mapping[str, Any]) -> list[str]:
    """The lines of a PEM private key in `auth`, each a secret of its own: a log line or a message
    quoting part of a key is masked too."""
    key = auth.get("private_key")
    if not isinstance(key, str):
        return []
    return [line.strip() for line in key.splitlines() if line.strip() and "-----" not in line]


def check_oauth(auth: Mapping[str, Any]) -> None:
    """An `oauth` auth object's fields, each of the right type (`ValueError` says which is not). The client id and its credential
    may still be missing (the seed's sample row); a call then says what to set."""
    for name in ("client_id", "client_secret", "private_key", "key_id", "provider"):
        value = auth.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"auth.{name} must be a non-empty string")
    if len(auth.get("client_id") or "") > 255:
        raise ValueError("auth.client_id is longer than 255 characters")
    secret, key = auth.get("client_secret"), auth.get("private_key")
    if secret and key:
        raise ValueError("auth has both client_secret and private_key; an OAuth client uses one of them")
    method = auth.get("token_endpoint_auth_method")
    if method is not None and method not in OAUTH_AUTH_METHODS:
        raise ValueError(f"auth.token_endpoint_auth_method must be one of {', '.join(OAUTH_AUTH_METHODS)}")
    if method == "private_key_jwt" and secret:
        raise ValueError(
            "auth.token_endpoint_auth_method private_key_jwt signs with a private_key, not a secret"
        )
    if method in ("client_secret_basic", "client_secret_post") and key:
        raise ValueError(f"auth.token_endpoint_auth_method {method} needs a client_secret, not a private_key")
    if key and "-----BEGIN" not in key:
        raise ValueError("auth.private_key must be a PEM private key (-----BEGIN ... PRIVATE KEY-----)")
    algorithm = auth.get("signing_algorithm")
    if algorithm is not None and algorithm not in OAUTH_SIGNING_ALGORITHMS:
        raise ValueError(f"auth.signing_algorithm must be one of {', '.join(OAUTH_SIGNING_ALGORITHMS)}")
    for key_name in ("issuer", "token_endpoint"):
        url = auth.get(key_name)
        if url is None:
            continue
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 1024:
            raise ValueError(f"auth.{key_name} must be an http(s) URL with a host")
    oauth_scopes(auth.get("scope"))
