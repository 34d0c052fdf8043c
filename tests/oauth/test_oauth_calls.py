"""OAuth client credentials through the MCP runtime, in this process, against a real
authorization server and an MCP server that accepts only its tokens (tests/fakes/oauth_server.py).
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from oauth_helpers import OAuthWorld, oauth_service, rsa_key_pair
from processes import wait_until

from worker import mcp
from worker.db.engine import session_scope
from worker.db.models import McpOAuthToken
from worker.errors import AuthenticationFailed, InvalidService
from worker.oauth.tokens import TOKEN_REFRESH_MARGIN_S, Token

# A lifetime below twice the margin: the token is replaced halfway, a few seconds after it came.
SHORT_LIFETIME_S = 8
assert SHORT_LIFETIME_S < 2 * TOKEN_REFRESH_MARGIN_S


def whoami(config: object) -> object:
    outcome = mcp.call_tool(config, "whoami", {})  # type: ignore[arg-type]
    assert not outcome.is_error, outcome
    return outcome.result


@pytest.mark.parametrize(
    ("method", "with_issuer"),
    [("client_secret_basic", False), ("client_secret_post", True), ("private_key_jwt", False)],
)
def test_each_client_authentication_gets_a_token_the_server_accepts(
    world: OAuthWorld, method: str, with_issuer: bool
) -> None:
    auth: dict[str, object] = {"token_endpoint_auth_method": method}
    if method == "private_key_jwt":
        private, public = rsa_key_pair()
        client_id = world.add_client(public_key=public)
        auth["private_key"] = private
    else:
        client_id = world.add_client(secret=f"secret-{method}")
        auth["client_secret"] = f"secret-{method}"
    if with_issuer:
        auth["issuer"] = world.issuer  # set in auth: no protected-resource discovery needed
    config = oauth_service(world, client_id, **auth)

    assert whoami(config) == {"client_id": client_id}
    assert whoami(config) == {"client_id": client_id}
    assert world.token_requests(client_id) == 1
    stats = world.admin("stats")
    assert stats["methods"][-1] == method
    assert stats["resources"][-1] == world.mcp_url  # RFC 8707: the token is for this server


def test_an_sse_service_uses_oauth_too(world: OAuthWorld) -> None:
    """The seed's oauth sample row is an SSE service."""
    client_id = world.add_client(secret="s3cret-sse")
    config = oauth_service(world, client_id, client_secret="s3cret-sse", mode="sse")
    assert whoami(config) == {"client_id": client_id}
    assert world.token_requests(client_id) == 1


def test_a_token_about_to_expire_is_replaced_before_it_is_used(world: OAuthWorld) -> None:
    """A token within its refresh margin is never sent: the next call gets a new one first, while
    the old one is still valid, and the server never refuses a token."""
    client_id = world.add_client(secret="short-lived", expires_in=SHORT_LIFETIME_S)
    config = oauth_service(world, client_id, client_secret="short-lived")
    refused_before = world.refused_tokens()

    whoami(config)
    assert world.token_requests(client_id) == 1
    with session_scope() as session:
        row = session.scalars(sa.select(McpOAuthToken).where(McpOAuthToken.client_id == client_id)).one()
        assert row.expires_at is not None and row.fetched_at is not None
        token = Token("", row.expires_at.timestamp(), (row.expires_at - row.fetched_at).total_seconds())
    refresh_at = token.refresh_at()
    assert refresh_at is not None and token.expires_at is not None
    wait_until(lambda: time.time() >= refresh_at, SHORT_LIFETIME_S, "the token to come within its margin")

    whoami(config)
    assert time.time() < token.expires_at, "the machine was too slow to see the old token still valid"
    assert world.token_requests(client_id) == 2
    assert world.refused_tokens() == refused_before


def test_a_long_lived_token_is_reused_and_stored(world: OAuthWorld) -> None:
    client_id = world.add_client(secret="long-lived", expires_in=3600)
    config = oauth_service(world, client_id, client_secret="long-lived")
    for _ in range(3):
        whoami(config)
    assert world.token_requests(client_id) == 1
    with session_scope() as session:
        row = session.scalars(sa.select(McpOAuthToken).where(McpOAuthToken.client_id == client_id)).one()
        assert row.token_requests == 1 and row.expires_at is not None
        assert row.issuer == world.issuer
    # A new process (here: a fresh runtime and cache) reads the stored token instead of fetching.
    mcp.shutdown_runtime()
    from worker.oauth.tokens import forget_tokens

    forget_tokens()
    whoami(config)
    assert world.token_requests(client_id) == 1


def test_a_refused_token_gets_one_new_token_and_one_retry(world: OAuthWorld) -> None:
    client_id = world.add_client(secret="forgotten")
    config = oauth_service(world, client_id, client_secret="forgotten")
    whoami(config)
    refused_before = world.refused_tokens()
    world.admin("forget_tokens", {"client_id": client_id})  # the server no longer knows it

    assert whoami(config) == {"client_id": client_id}
    assert world.token_requests(client_id) == 2
    assert world.refused_tokens() == refused_before + 1


def test_a_revoked_client_fails_with_authentication_failed(world: OAuthWorld) -> None:
    client_id = world.add_client(secret="revoked-secret-value")
    config = oauth_service(world, client_id, client_secret="revoked-secret-value")
    whoami(config)  # a pooled session with a valid token
    world.admin("revoke", {"client_id": client_id})

    with pytest.raises(AuthenticationFailed, match="invalid_client") as caught:
        mcp.call_tool(config, "whoami", {})
    assert client_id in str(caught.value) and "revoked-secret-value" not in str(caught.value)
    # A new session (another process, a later call) says the same at once.
    mcp.shutdown_runtime()
    with pytest.raises(AuthenticationFailed, match="invalid_client"):
        mcp.call_tool(config, "whoami", {})


def test_a_wrong_secret_is_refused_and_never_gets_another_clients_token(world: OAuthWorld) -> None:
    client_id = world.add_client(secret="the-right-secret")
    whoami(oauth_service(world, client_id, client_secret="the-right-secret"))
    with pytest.raises(AuthenticationFailed, match="invalid_client"):
        mcp.call_tool(oauth_service(world, client_id, client_secret="a-wrong-secret"), "whoami", {})


def test_an_oauth_service_without_a_client_says_what_to_set(world: OAuthWorld) -> None:
    config = oauth_service(world, "x")
    bare = type(config)(**{**config.__dict__, "auth": {"type": "oauth", "provider": "openproject"}})
    with pytest.raises(InvalidService, match="client_id"):
        mcp.call_tool(bare, "whoami", {})
