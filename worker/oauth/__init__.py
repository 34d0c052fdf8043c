"""OAuth for machine-to-machine MCP calls: client credentials, with a client secret
(`client_secret_basic`/`client_secret_post`) or a private key signing an RFC 7523 client assertion
(`private_key_jwt`).

- `settings`: `OAuthClient`, a service's OAuth settings read from its `auth`, and their validation
  (SQL-free: `worker.services.config` uses it).
- `discovery`: which authorization server and token endpoint a service's client talks to: set in
  `auth` (`issuer` or `token_endpoint`) or found from the MCP server's protected-resource metadata
  (RFC 9728) and the authorization server's metadata (RFC 8414); then the token request itself.
- `tokens`: the token store (`mcp_oauth_tokens`, tokens encrypted like `api_key`): one token per
  credential shared by every worker process, fetched by one process at a time, replaced
  `TOKEN_REFRESH_MARGIN_S` before it expires.
- `auth`: the `httpx2.Auth` the HTTP transports send requests through: the bearer header, and on
  a 401 one fresh token and one retry.

Why not the SDK's `ClientCredentialsOAuthProvider` / `PrivateKeyJWTOAuthProvider` (mcp 2.3, read
in `mcp/client/auth/extensions/client_credentials.py` and `oauth2.py`): their flow is a generator
that reads `TokenStorage.get_tokens()` once per provider and fetches a token inside the request
that got a 401, under an in-process `anyio.Lock`. Two worker processes (or two pooled sessions)
would each fetch their own token, and the token request happens between `get_tokens` and
`set_tokens` with no hook to hold a database row lock across it. A client-credentials token has
no refresh token (RFC 6749 4.4.3), so the providers only replace it after the server refused it,
never before it expires, and every 401 re-runs discovery. Their token errors carry the
authorization server's response body and are logged with `logger.exception`. What they do well is
reused here rather than rewritten: the SDK's discovery URL builders, metadata models and issuer
checks (`mcp.client.auth.utils`, `mcp.shared.auth`), and the same assertion claims as its
`SignedJWTParameters`, signed with PyJWT (the SDK's own dependency).
"""
