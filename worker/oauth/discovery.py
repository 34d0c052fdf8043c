"""Where a service's OAuth client gets its tokens, and the token request itself.

Synchronous (`httpx2.Client`): both run in a thread while it holds the credential's row lock (see
`worker.oauth.tokens`). Endpoints come from `auth.token_endpoint`, else the metadata of
`auth.issuer` (RFC 8414), else the MCP server's protected-resource metadata (RFC 9728) names the
authorization server; discovered endpoints are remembered for the life of the process.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2
import jwt
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    issuers_match,
)
from mcp.shared.auth import OAuthMetadata, OAuthToken, ProtectedResourceMetadata
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url
from pydantic import ValidationError

from worker.errors import AuthenticationFailed, InvalidService, ProtocolError, ServerError, ServerUnavailable
from worker.oauth.settings import OAuthClient
from worker.redaction import redact

logger = logging.getLogger(__name__)

# Lifetime of a signed client assertion: long enough for clock skew, short enough to be useless
# if intercepted (the SDK's SignedJWTParameters default).
ASSERTION_LIFETIME_S = 300
# The token endpoint's `error_description` is kept this long in a message.
DESCRIPTION_MAX = 200
# Token errors that mean the client itself is refused: retrying cannot help (RFC 6749 5.2).
REFUSED = (
    "invalid_client",
    "unauthorized_client",
    "invalid_grant",
    "invalid_scope",
    "unsupported_grant_type",
)
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class Endpoints:
    """The authorization server a client uses, and the audience its tokens are for."""

    issuer: str
    token_endpoint: str
    resource: str
    """RFC 8707 `resource` sent with the token request: the MCP server, as its metadata names it."""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str = field(repr=False)
    expires_in: int | None
    scope: str | None


_lock = threading.Lock()
_endpoints: dict[tuple[str, str | None, str | None], Endpoints] = {}


def endpoints_for(client: OAuthClient, http: httpx2.Client) -> Endpoints:
    """The client's authorization server, discovered once per process.

    Raises:
        InvalidService: no authorization server can be found, or its metadata names another issuer.
        ServerUnavailable, ServerError: the metadata could not be fetched (transient).
    """
    key = (client.server_url, client.issuer, client.token_endpoint)
    with _lock:
        found = _endpoints.get(key)
    if found is None:
        found = _discover(client, http)
        with _lock:
            _endpoints[key] = found
    return found


def forget_endpoints() -> None:
    """Drop discovered endpoints (an authorization server moved)."""
    with _lock:
        _endpoints.clear()


def _discover(client: OAuthClient, http: httpx2.Client) -> Endpoints:
    where = f"OAuth discovery for {_origin(client.server_url)}"
    # RFC 8707, required of MCP clients since the 2025-06-18 specification: the token is for this
    # server (or the resource its metadata names).
    resource = resource_url_from_server_url(client.server_url)
    issuer = client.issuer
    if client.token_endpoint is not None:
        return Endpoints(issuer or _origin(client.token_endpoint), client.token_endpoint, resource)
    if issuer is None:
        prm = _protected_resource(client.server_url, http, where)
        if prm is None or not prm.authorization_servers:
            raise InvalidService(
                f"{where}: the MCP server publishes no protected-resource metadata naming an authorization "
                "server; set auth.issuer (or auth.token_endpoint)"
            )
        issuer = str(prm.authorization_servers[0])
        resource = str(prm.resource) if prm.resource else resource
    metadata = _authorization_server(issuer, client.server_url, http, where)
    if metadata.token_endpoint is None:
        raise InvalidService(f"{where}: the metadata of {issuer} has no token_endpoint")
    return Endpoints(str(metadata.issuer), str(metadata.token_endpoint), resource)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _get(url: str, http: httpx2.Client, where: str) -> httpx2.Response:
    try:
        response = http.get(url, headers={"Accept": "application/json"})
    except httpx2.TimeoutException:
        raise ServerUnavailable(f"{where}: {_origin(url)} did not answer in time") from None
    except httpx2.TransportError as exc:
        raise ServerUnavailable(f"{where}: cannot reach {_origin(url)} ({type(exc).__name__})") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise ServerError(f"{where}: {url} answered HTTP {response.status_code}")
    return response


def _protected_resource(server_url: str, http: httpx2.Client, where: str) -> ProtectedResourceMetadata | None:
    wanted = resource_url_from_server_url(server_url)
    for url in build_protected_resource_metadata_discovery_urls(None, server_url):
        response = _get(url, http, where)
        if response.status_code != 200:
            continue
        try:
            prm = ProtectedResourceMetadata.model_validate_json(response.content)
        except ValidationError:
            logger.warning("%s: %s is not protected-resource metadata; trying the next URL", where, url)
            continue
        # RFC 9728 3.3: metadata for another resource must not be used for this one.
        if prm.resource and not check_resource_allowed(wanted, str(prm.resource)):
            raise InvalidService(f"{where}: {url} describes resource {prm.resource}, not {wanted}")
        return prm
    return None


def _authorization_server(issuer: str, server_url: str, http: httpx2.Client, where: str) -> OAuthMetadata:
    for url in build_oauth_authorization_server_metadata_discovery_urls(issuer, server_url):
        response = _get(url, http, where)
        if response.status_code != 200:
            continue
        try:
            metadata = OAuthMetadata.model_validate_json(response.content)
        except ValidationError:
            continue
        # RFC 8414 3.3: the metadata must name the issuer it was fetched for.
        if not issuers_match(str(metadata.issuer), issuer):
            raise InvalidService(
                f"{where}: the metadata at {url} names issuer {metadata.issuer}, not {issuer}"
            )
        return metadata
    raise InvalidService(f"{where}: no authorization server metadata found for {issuer}")


def request_token(client: OAuthClient, endpoints: Endpoints, http: httpx2.Client) -> IssuedToken:
    """One client-credentials token request (RFC 6749 4.4).

    Raises:
        AuthenticationFailed: the authorization server refused the client (invalid_client, ...).
        InvalidService: the client's private key cannot sign.
        ServerUnavailable, ServerError: the token endpoint could not be reached or failed (transient).
        ProtocolError: it answered something that is not a token response.
    """
    data: dict[str, str] = {"grant_type": "client_credentials"}
    headers = {"Accept": "application/json"}
    if client.scopes:
        data["scope"] = client.scopes
    if endpoints.resource:
        data["resource"] = endpoints.resource
    if client.method == "private_key_jwt":
        data["client_id"] = client.client_id
        data["client_assertion_type"] = JWT_BEARER
        data["client_assertion"] = _assertion(client, endpoints.issuer)
    elif client.method == "client_secret_post":
        data["client_id"] = client.client_id
        data["client_secret"] = client.client_secret or ""
    else:
        # RFC 6749 2.3.1: both halves form-urlencoded before the Basic encoding.
        pair = f"{quote(client.client_id, safe='')}:{quote(client.client_secret or '', safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    where = f"the authorization server {endpoints.issuer}"
    try:
        response = http.post(endpoints.token_endpoint, data=data, headers=headers)
    except httpx2.TimeoutException:
        raise ServerUnavailable(f"{where} did not answer the token request in time") from None
    except httpx2.TransportError as exc:
        raise ServerUnavailable(f"cannot reach {where} for a token ({type(exc).__name__})") from None
    body = _json(response)
    if response.status_code in (200, 201):
        try:
            token = OAuthToken.model_validate(body)
        except ValidationError:
            raise ProtocolError(f"{where} answered the token request without a usable bearer token") from None
        return IssuedToken(token.access_token, token.expires_in, token.scope)
    error = str(body.get("error") or "") if isinstance(body, dict) else ""
    if error in REFUSED or response.status_code in (400, 401, 403):
        description = body.get("error_description") if isinstance(body, dict) else None
        why = f": {redact(str(description))[:DESCRIPTION_MAX]}" if description else ""
        raise AuthenticationFailed(
            f"{where} refused OAuth client {client.client_id!r} ({error or f'HTTP {response.status_code}'}"
            f"{why}); check its client id and {'private key' if client.private_key else 'client secret'}"
        )
    raise ServerError(f"{where} answered the token request with HTTP {response.status_code}")


def _json(response: httpx2.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _assertion(client: OAuthClient, audience: str) -> str:
    """An RFC 7523 client assertion: the claims of the SDK's `SignedJWTParameters`, audience the
    issuer (draft-ietf-oauth-rfc7523bis)."""
    now = int(time.time())
    claims = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": audience,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_S,
        "jti": str(uuid.uuid4()),
    }
    headers = {"kid": client.key_id} if client.key_id else None
    try:
        return jwt.encode(claims, _signing_key(client.private_key or ""), client.signing_algorithm, headers)
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise InvalidService(
            f"OAuth client {client.client_id!r}: its private key cannot sign {client.signing_algorithm} "
            f"assertions ({type(exc).__name__})"
        ) from None


@functools.lru_cache(maxsize=64)
def _signing_key(pem: str) -> Any:
    """The parsed key (parsing a PEM costs more than signing with it)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pem.encode(), password=None)


def check_private_key(pem: str) -> None:
    """Refuse a private key that does not parse, before it is saved.

    Raises:
        InvalidService: not an unencrypted PEM private key.
    """
    try:
        _signing_key(pem)
    except (ValueError, TypeError):
        raise InvalidService(
            "auth.private_key is not an unencrypted PEM private key (PKCS#8 or traditional)"
        ) from None
