"""The OAuth test world: `tests/fakes/oauth_server.py` (an authorization server and an MCP server
that accepts only its tokens) started on loopback, and OAuth service records pointing at it."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from processes import Proc, free_port, start_listening, wait_until

from worker.processes import port_open
from worker.services.config import ServiceConfig, validate_record

FAKE = Path(__file__).resolve().parent.parent / "fakes" / "oauth_server.py"
START_TIMEOUT_S = 60.0
ADMIN_TIMEOUT_S = 10.0


@dataclass
class OAuthWorld:
    proc: Proc
    issuer: str
    mcp_url: str
    sse_url: str

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        if body is None:
            response = httpx2.get(f"{self.issuer}/admin/{path}", timeout=ADMIN_TIMEOUT_S)
        else:
            response = httpx2.post(f"{self.issuer}/admin/{path}", json=body, timeout=ADMIN_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def add_client(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        expires_in: int = 3600,
        delay_s: float = 0.0,
    ) -> str:
        client_id = f"client-{uuid.uuid4().hex[:8]}"
        body = {"client_id": client_id, "secret": secret, "public_key": public_key, "expires_in": expires_in}
        self.admin("clients", {**body, "delay_s": delay_s})
        return client_id

    def token_requests(self, client_id: str) -> int:
        return int(self.admin("stats")["requests"].get(client_id, 0))

    def refused_tokens(self) -> int:
        return int(self.admin("stats")["refused_tokens"])

    def issued(self) -> list[str]:
        return list(self.admin("issued")["tokens"])

    def stop(self) -> None:
        self.proc.stop()


def start_oauth_world(log_dir: Path) -> OAuthWorld:
    as_port, mcp_port, sse_port = free_port(), free_port(), free_port()
    argv = [sys.executable, str(FAKE), "--as-port", str(as_port), "--mcp-port", str(mcp_port)]
    argv += ["--sse-port", str(sse_port)]
    proc = start_listening(f"oauth-{as_port}", argv, mcp_port, os.environ, log_dir, START_TIMEOUT_S)
    for port in (as_port, sse_port):
        wait_until(lambda port=port: port_open(port), START_TIMEOUT_S, f"oauth fake on {port}")  # type: ignore[misc]
    return OAuthWorld(
        proc,
        f"http://127.0.0.1:{as_port}",
        f"http://127.0.0.1:{mcp_port}/mcp",
        f"http://127.0.0.1:{sse_port}/sse",
    )


def oauth_record(
    world: OAuthWorld, client_id: str, *, user: str = "oauth-user", desc: str = "oauth", **auth: Any
) -> dict[str, Any]:
    mode = auth.pop("mode", "streamable_http")
    return {
        "user_id": user,
        "desc": desc,
        "interaction_mode": mode,
        "url": world.sse_url if mode == "sse" else world.mcp_url,
        "api_key": "",
        "auth": {"type": "oauth", "client_id": client_id, **auth},
    }


def oauth_service(world: OAuthWorld, client_id: str, **auth: Any) -> ServiceConfig:
    return validate_record(oauth_record(world, client_id, **auth))


def rsa_key_pair() -> tuple[str, str]:
    """A fresh RSA private key and its public key, both PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public
