"""A real OAuth authorization server and an MCP server that accepts only its tokens, on loopback.

    python tests/fakes/oauth_server.py --as-port P --mcp-port Q

One process, two ports, one in-memory token table they share:
- the authorization server (Starlette): RFC 8414 metadata at
  `/.well-known/oauth-authorization-server` and a token endpoint at `/token` that issues
  `client_credentials` tokens to clients authenticating with `client_secret_basic`,
  `client_secret_post` or `private_key_jwt` (RFC 7523, checked with PyJWT against the client's
  public key, audience the issuer, each assertion `jti` once);
- the MCP server (the SDK's `MCPServer` with its resource-server auth: the bearer middleware and
  RFC 9728 protected-resource metadata naming the authorization server) over streamable HTTP at
  `/mcp` (and with `--sse-port`, over HTTP+SSE at `/sse` there), with tools `whoami` (the client id of the caller's token) and `echo`.

Tests drive it through admin endpoints on the authorization server (loopback only, no auth):
`POST /admin/clients` `{"client_id", "secret" | "public_key", "expires_in", "delay_s"}` registers
or replaces a client (its token responses delayed by `delay_s`), `POST /admin/revoke` `{"client_id"}` refuses the client from now on and
invalidates its tokens, `POST /admin/forget_tokens` `{"client_id"}` only invalidates its tokens,
`GET /admin/stats` returns the token requests per client, the authentication method and
`resource` of each, and how many MCP requests were refused for a bad token, `GET /admin/issued` every token issued.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import jwt
import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The longest a token response may be delayed, whatever a test asks.
MAX_DELAY_S = 5.0


@dataclass
class Client:
    client_id: str
    secret: str | None
    public_key: str | None
    expires_in: int
    delay_s: float = 0.0
    revoked: bool = False


@dataclass
class State:
    issuer: str
    clients: dict[str, Client] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float, str]] = field(default_factory=dict)  # token -> client, expiry, scope
    requests: dict[str, int] = field(default_factory=dict)
    refused_tokens: int = 0
    seen_jti: set[str] = field(default_factory=set)
    methods: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    resources: list[str | None] = field(default_factory=list)


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def authorization_server(state: State) -> Starlette:
    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "issuer": state.issuer,
                "authorization_endpoint": f"{state.issuer}/authorize",
                "token_endpoint": f"{state.issuer}/token",
                "grant_types_supported": ["client_credentials"],
                "response_types_supported": ["token"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                    "private_key_jwt",
                ],
                "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
            }
        )

    def authenticate(request: Request, form: dict[str, str]) -> tuple[Client | None, str]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            client = state.clients.get(unquote(client_id))
            ok = (
                client is not None
                and client.secret is not None
                and secrets.compare_digest(client.secret, unquote(secret))
            )
            return (client if ok else None), "client_secret_basic"
        if form.get("client_assertion_type") == JWT_BEARER:
            client = state.clients.get(form.get("client_id", ""))
            if client is None or client.public_key is None:
                return None, "private_key_jwt"
            try:
                claims = jwt.decode(
                    form.get("client_assertion", ""),
                    client.public_key,
                    algorithms=["RS256", "ES256"],
                    audience=state.issuer,
                    options={"require": ["exp", "iat", "jti", "iss", "sub", "aud"]},
                )
            except jwt.PyJWTError:
                return None, "private_key_jwt"
            if (
                claims["iss"] != client.client_id
                or claims["sub"] != client.client_id
                or claims["jti"] in state.seen_jti
            ):
                return None, "private_key_jwt"
            state.seen_jti.add(claims["jti"])
            return client, "private_key_jwt"
        client = state.clients.get(form.get("client_id", ""))
        secret = form.get("client_secret", "")
        ok = (
            client is not None and client.secret is not None and secrets.compare_digest(client.secret, secret)
        )
        return (client if ok else None), "client_secret_post"

    async def token(request: Request) -> JSONResponse:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", "only client_credentials")
        client, method = authenticate(request, form)
        name = client.client_id if client else form.get("client_id", "?")
        state.requests[name] = state.requests.get(name, 0) + 1
        state.methods.append(method)
        state.resources.append(form.get("resource"))
        if client is None or client.revoked:
            return _error(401, "invalid_client", "client authentication failed")
        # A slow authorization server widens the window in which two workers would both fetch.
        await asyncio.sleep(min(client.delay_s, MAX_DELAY_S))
        access = secrets.token_urlsafe(32)
        scope = form.get("scope", "")
        state.tokens[access] = (client.client_id, time.time() + client.expires_in, scope)
        state.issued.append(access)
        return JSONResponse(
            {"access_token": access, "token_type": "Bearer", "expires_in": client.expires_in, "scope": scope},
            headers={"Cache-Control": "no-store"},
        )

    async def add_client(request: Request) -> JSONResponse:
        body = await request.json()
        state.clients[body["client_id"]] = Client(
            body["client_id"],
            body.get("secret"),
            body.get("public_key"),
            int(body.get("expires_in", 3600)),
            float(body.get("delay_s", 0.0)),
        )
        return JSONResponse({"ok": True})

    async def revoke(request: Request) -> JSONResponse:
        client_id = (await request.json())["client_id"]
        state.clients[client_id].revoked = True
        for access in [t for t, (c, _, _) in state.tokens.items() if c == client_id]:
            del state.tokens[access]
        return JSONResponse({"ok": True})

    async def forget_tokens(request: Request) -> JSONResponse:
        client_id = (await request.json())["client_id"]
        for access in [t for t, (c, _, _) in state.tokens.items() if c == client_id]:
            del state.tokens[access]
        return JSONResponse({"ok": True})

    async def issued(_: Request) -> JSONResponse:
        return JSONResponse({"tokens": state.issued})

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "requests": state.requests,
                "tokens_issued": sum(state.requests.values()),
                "refused_tokens": state.refused_tokens,
                "methods": state.methods,
                "resources": state.resources,
            }
        )

    return Starlette(
        routes=[
            Route("/.well-known/oauth-authorization-server", metadata),
            Route("/token", token, methods=["POST"]),
            Route("/admin/clients", add_client, methods=["POST"]),
            Route("/admin/revoke", revoke, methods=["POST"]),
            Route("/admin/forget_tokens", forget_tokens, methods=["POST"]),
            Route("/admin/issued", issued),
            Route("/admin/stats", stats),
        ]
    )


class SharedVerifier:
    """Accepts a token only while the authorization server's table holds it unexpired."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def verify_token(self, token: str) -> AccessToken | None:
        found = self.state.tokens.get(token)
        if found is None or found[1] < time.time():
            self.state.refused_tokens += 1
            return None
        client_id, expires, scope = found
        return AccessToken(token=token, client_id=client_id, scopes=scope.split(), expires_at=int(expires))


def mcp_server(state: State, mcp_url: str, transport: str = "streamable-http") -> Starlette:
    server = MCPServer(
        "oauth-test",
        auth=AuthSettings(
            issuer_url=state.issuer, resource_server_url=mcp_url, validate_token_resource=False
        ),
        token_verifier=SharedVerifier(state),
    )

    @server.tool()
    def whoami() -> dict[str, Any]:
        """The client id the caller's token was issued to."""
        access = get_access_token()
        return {"client_id": access.client_id if access else None}

    @server.tool()
    def echo(message: str) -> str:
        """Return the message."""
        return message

    return server.sse_app() if transport == "sse" else server.streamable_http_app()


async def serve(as_port: int, mcp_port: int, sse_port: int | None) -> None:
    state = State(issuer=f"http://127.0.0.1:{as_port}")
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    apps = []
    if sse_port is not None:
        sse = mcp_server(state, f"http://127.0.0.1:{sse_port}/sse", "sse")
        apps.append(uvicorn.Config(sse, host="127.0.0.1", port=sse_port, log_level="warning"))
    servers = [
        *map(uvicorn.Server, apps),
        uvicorn.Server(
            uvicorn.Config(authorization_server(state), host="127.0.0.1", port=as_port, log_level="warning")
        ),
        uvicorn.Server(
            uvicorn.Config(mcp_server(state, mcp_url), host="127.0.0.1", port=mcp_port, log_level="warning")
        ),
    ]
    await asyncio.gather(*(s.serve() for s in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--as-port", type=int, required=True)
    parser.add_argument("--mcp-port", type=int, required=True)
    parser.add_argument("--sse-port", type=int, help="also serve the MCP server over HTTP+SSE here (/sse)")
    args = parser.parse_args()
    asyncio.run(serve(args.as_port, args.mcp_port, args.sse_port))


if __name__ == "__main__":
    main()
