"""The OAuth token store: one access token per credential, shared by every worker process.

A credential is issuer + client id + scopes + resource, plus a digest of the client's secret or
key, so a service naming another's client id without its secret never gets that client's token.
Its row in `mcp_oauth_tokens` holds the token (encrypted with MCP_SECRET_KEY like `api_key`) and
is the lock: the process that needs a token takes `SELECT ... FOR UPDATE` on the row, and only if
the token there is missing, was refused, or expires within `TOKEN_REFRESH_MARGIN_S` does it ask
the authorization server, before committing. Every other process blocks on the row meanwhile and
then reads the new token, so a credential is fetched once at a time across all processes.

On the embedded SQLite database `FOR UPDATE` is a no-op: the upsert that opens the transaction
takes SQLite's single database write lock, which serializes the fetch across processes as well
(for up to the engine's busy timeout), and the per-process lock below does so within a process.

In a process, tokens are kept in memory until they come within the margin of expiry, so a call
with a fresh token touches neither the database nor the authorization server; concurrent calls
that need a new one wait for a single fetch (`asyncio.Lock` per credential on the MCP loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx2
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.db.engine import session_scope
from worker.db.models import McpOAuthToken
from worker.errors import AuthenticationFailed, InvalidService
from worker.oauth.discovery import Endpoints, endpoints_for, request_token
from worker.oauth.settings import OAuthClient
from worker.redaction import register_secrets
from worker.services import crypto
from worker.settings import get_settings

logger = logging.getLogger(__name__)

# A token is replaced this long before it expires, so a call never starts with a token that may
# expire in flight (and clocks of the worker and the servers may differ by a little). A token
# that lives less than twice as long is replaced halfway through its life instead, so a
# short-lived one is still used for a while rather than fetched for every request.
TOKEN_REFRESH_MARGIN_S = 60.0


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    expires_at: float | None
    """Unix time the token expires; None when the server did not say (used until refused)."""
    lifetime: float | None = None
    """How long it was valid for when issued (`expires_in`), if known."""

    def refresh_at(self) -> float | None:
        """Unix time from which the token is replaced before use."""
        if self.expires_at is None:
            return None
        margin = (
            TOKEN_REFRESH_MARGIN_S if not self.lifetime else min(TOKEN_REFRESH_MARGIN_S, self.lifetime / 2)
        )
        return self.expires_at - margin

    def fresh(self, now: float | None = None) -> bool:
        """Whether it may still be sent (it is not within its refresh margin)."""
        refresh_at = self.refresh_at()
        return refresh_at is None or (now if now is not None else time.time()) < refresh_at


def credential_key(client: OAuthClient, endpoints: Endpoints) -> str:
    """The row key of a credential: a digest, so the secret itself is never part of it."""
    material = json.dumps(
        [
            endpoints.issuer,
            client.client_id,
            client.scopes,
            endpoints.resource,
            client.method,
            hashlib.sha256((client.client_secret or client.private_key or "").encode()).hexdigest(),
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _insert_missing(session: Session, key: str, client: OAuthClient, endpoints: Endpoints) -> None:
    values = {
        "credential_key": key,
        "issuer": endpoints.issuer[:1024],
        "client_id": client.client_id,
        "scopes": client.scopes[:1024],
        "resource": endpoints.resource[:1024],
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(McpOAuthToken).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(McpOAuthToken).values(values).on_conflict_do_nothing())
    else:  # pragma: no cover - only the two supported databases
        raise NotImplementedError(dialect)


def _as_epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _stored_token(row: McpOAuthToken, keys: str | None) -> str | None:
    """The row's token in clear; None when there is none or it no longer decrypts (the key was
    changed or removed): a new one is fetched rather than the call failing."""
    if not row.access_token:
        return None
    try:
        return crypto.decrypt(row.access_token, keys)
    except InvalidService:
        logger.warning(
            "OAuth: the stored token of client %r does not decrypt; fetching a new one", row.client_id
        )
        return None


def obtain(client: OAuthClient, timeout: float, rejected: str | None = None) -> Token:
    """The credential's token: the stored one while it is fresh (and not `rejected`), else a new
    one from the authorization server, fetched while holding the credential's row lock.

    Blocking (database and HTTP); the MCP loop runs it in a thread (`TokenSource.token`).

    Raises:
        AuthenticationFailed: the authorization server refused the client.
        InvalidService: no authorization server can be found for it, or its key cannot sign.
        ServerUnavailable, ServerError: discovery or the token request failed (transient).
    """
    keys = get_settings().secret_key
    with httpx2.Client(timeout=timeout, follow_redirects=False) as http:
        endpoints = endpoints_for(client, http)
        key = credential_key(client, endpoints)
        refused: AuthenticationFailed | None = None
        with session_scope() as session:
            _insert_missing(session, key, client, endpoints)
            row = session.scalars(
                sa.select(McpOAuthToken).where(McpOAuthToken.credential_key == key).with_for_update()
            ).one()
            stored = _stored_token(row, keys)
            if stored is not None and stored != rejected:
                expires_at, fetched_at = _as_epoch(row.expires_at), _as_epoch(row.fetched_at)
                lifetime = expires_at - fetched_at if expires_at and fetched_at else None
                token = Token(stored, expires_at, lifetime)
                if token.fresh():
                    register_secrets([stored])
                    return token
            try:
                issued = request_token(client, endpoints, http)
            except AuthenticationFailed as exc:
                # The client is refused: its old token must not be handed out again either.
                row.access_token = None
                row.expires_at = None
                refused = exc
            else:
                register_secrets([issued.access_token])
                now = datetime.now(UTC)
                expires = now + timedelta(seconds=issued.expires_in) if issued.expires_in else None
                row.access_token = crypto.encrypt(issued.access_token, keys)
                row.expires_at = expires
                row.token_type = "Bearer"  # noqa: S105  (the token type, not a secret)
                row.fetched_at = now
                row.token_requests = (row.token_requests or 0) + 1
                logger.info(
                    "OAuth: new access token for client %r from %s (expires in %s s)",
                    client.client_id,
                    endpoints.issuer,
                    issued.expires_in if issued.expires_in is not None else "?",
                )
                return Token(issued.access_token, _as_epoch(expires), issued.expires_in)
        # Committed above (the token cleared); the refusal is raised only now.
        assert refused is not None
        raise refused


class TokenSource:
    """The tokens of one OAuth client as the MCP loop sees them: in memory while fresh, else from
    `obtain` in a thread, one fetch at a time per credential in this process."""

    def __init__(self, client: OAuthClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.key = _client_key(client)

    async def token(self, rejected: str | None = None) -> Token:
        """A token to send: the cached one if fresh and not `rejected`, else a new or stored one.

        Raises:
            WorkerError: as for `obtain`.
        """
        cache = _process_cache()
        cached = cache.tokens.get(self.key)
        if cached is not None and cached.access_token != rejected and cached.fresh():
            return cached
        async with cache.lock_for(self.key):
            cached = cache.tokens.get(self.key)
            if cached is not None and cached.access_token != rejected and cached.fresh():
                return cached  # another call fetched it while this one waited
            # Only the token this call saw refused is rejected, not one another call has since fetched.
            token = await asyncio.to_thread(obtain, self.client, self.timeout, rejected)
            cache.tokens[self.key] = token
            return token


def _client_key(client: OAuthClient) -> str:
    secret = hashlib.sha256((client.client_secret or client.private_key or "").encode()).hexdigest()
    fields = [client.server_url, client.issuer, client.token_endpoint, client.client_id, client.scopes]
    return hashlib.sha256(json.dumps([*fields, client.method, secret]).encode()).hexdigest()


class _Cache:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tokens: dict[str, Token] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    def lock_for(self, key: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.loop, self.locks = loop, {}
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock


_cache_guard = threading.Lock()
_cache: list[_Cache] = []


def _process_cache() -> _Cache:
    """This process's tokens (a fresh set after a fork: a child never uses its parent's locks)."""
    with _cache_guard:
        if not _cache or _cache[0].pid != os.getpid():
            _cache[:] = [_Cache()]
        return _cache[0]


def forget_tokens() -> None:
    """Drop this process's in-memory tokens; the stored ones stay."""
    with _cache_guard:
        _cache.clear()
