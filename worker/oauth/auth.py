"""`OAuthBearer`: the `httpx2.Auth` an `oauth` service's HTTP transport sends every request with.

Each request carries the credential's current token (`TokenSource`: replaced before it expires).
A 401 means the server no longer accepts it: the flow gets one new token, sends the request once
more, and hands back whatever that answers. When no token can be had mid-session (the client was
revoked, the authorization server is down), the failure is recorded on the session's `Probe`
before it is raised, so the call that hit it is classified by it (`worker.mcp.outcome.classify`
prefers the transport error of a session that died) and says what to fix.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

import httpx2

from worker.errors import WorkerError

if TYPE_CHECKING:
    from worker.oauth.tokens import TokenSource

logger = logging.getLogger(__name__)


class OAuthBearer(httpx2.Auth):
    """Bearer tokens from a `TokenSource`; on a 401 one fresh token and one retry."""

    def __init__(self, source: TokenSource, on_failure: Callable[[WorkerError], None]) -> None:
        self.source = source
        self.on_failure = on_failure

    async def _token(self, rejected: str | None = None) -> str:
        try:
            return (await self.source.token(rejected)).access_token
        except WorkerError as exc:
            self.on_failure(exc)
            raise

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        token = await self._token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        logger.info(
            "OAuth: %s refused the token of client %r (HTTP 401); getting a new one and retrying once",
            request.url.host,
            self.source.client.client_id,
        )
        request.headers["Authorization"] = f"Bearer {await self._token(rejected=token)}"
        yield request
