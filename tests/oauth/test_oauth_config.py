"""OAuth service records: what validation refuses, how the CLI takes the client secret or private
key (a file or stdin, never argv), that stored secrets and tokens are encrypted with
MCP_SECRET_KEY, and the seed's oauth sample row working once its client is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from oauth_helpers import OAuthWorld, rsa_key_pair
from stack import clean_env

from worker.db.engine import session_scope
from worker.db.models import McpOAuthToken, McpService
from worker.demo.sample_data import SAMPLE_SERVICES
from worker.errors import InvalidService
from worker.oauth.settings import oauth_client
from worker.services.config import validate_record
from worker.services.store import remove_service, save_service

CLI = [sys.executable, "-m", "worker.cli"]
SQLITE_PROCESSES = 4


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


def record(**auth: Any) -> dict[str, Any]:
    return {
        "user_id": "u",
        "desc": "d",
        "interaction_mode": auth.pop("mode", "streamable_http"),
        "url": auth.pop("url", "http://127.0.0.1:9/mcp"),
        "api_key": "",
        "auth": {"type": "oauth", **auth},
    }


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        (
            {"client_id": "c", "client_secret": "s", "private_key": "-----BEGIN PRIVATE KEY-----"},
            "one of them",
        ),
        (
            {"client_id": "c", "client_secret": "s", "token_endpoint_auth_method": "private_key_jwt"},
            "private_key",
        ),
        (
            {"client_id": "c", "client_secret": "s", "token_endpoint_auth_method": "tls_client_auth"},
            "must be one of",
        ),
        ({"client_id": "c", "private_key": "not a pem"}, "PEM"),
        ({"client_id": "c", "client_secret": "s", "issuer": "ftp://as.example"}, "auth.issuer"),
        ({"client_id": "c", "client_secret": "s", "scope": [1, 2]}, "auth.scope"),
        ({"client_id": 7}, "auth.client_id"),
        ({"client_id": "c", "client_secret": "s", "mode": "stdio", "url": "python -m x"}, "HTTP transport"),
    ],
)
def test_bad_oauth_records_are_refused_with_what_to_fix(auth: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidService, match=problem):
        validate_record(record(**auth))


def test_a_private_key_that_does_not_parse_is_refused_before_it_is_saved() -> None:
    bad = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with session_scope() as session, pytest.raises(InvalidService, match="PEM private key"):
        save_service(
            session, {**record(client_id="c", private_key=bad), "user_id": f"k-{uuid.uuid4().hex[:6]}"}
        )


def test_scopes_are_one_key_whatever_their_order() -> None:
    a = validate_record(record(client_id="c", client_secret="s", scope="b a"))
    b = validate_record(record(client_id="c", client_secret="s", scope=["a", "b", "a"]))
    assert oauth_client(a).scopes == oauth_client(b).scopes == "a b"


def test_secrets_are_masked_and_registered_for_redaction() -> None:
    private, _ = rsa_key_pair()
    config = validate_record(record(client_id="c", private_key=private))
    shown = json.dumps(config.public_dict())
    assert private not in shown and private.splitlines()[1] not in shown
    # A fragment of the key (one PEM line) is a secret of its own.
    assert private.splitlines()[1] in config.secrets()
    assert "s3cr3t-value" in validate_record(record(client_id="c", client_secret="s3cr3t-value")).secrets()


def test_the_cli_takes_the_client_secret_from_stdin_and_never_prints_it(
    world: OAuthWorld, tmp_path: Path
) -> None:
    user = f"cli-{uuid.uuid4().hex[:6]}"
    secret = f"cli-secret-{uuid.uuid4().hex}"
    client_id = world.add_client(secret=secret)
    auth = json.dumps({"type": "oauth", "client_id": client_id, "scope": "mcp"})
    added = run(
        "services", "add", "--user", user, "--desc", "m2m", "--mode", "http", "--url", world.mcp_url,
        "--auth", auth, "--client-secret-file", "-", stdin=secret + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert secret not in added.stdout + added.stderr and '"client_secret": "****' in added.stdout
    checked = run("services", "check", user, "m2m")
    assert checked.returncode == 0, checked.stderr
    assert "whoami" in checked.stdout and secret not in checked.stdout + checked.stderr
    assert world.token_requests(client_id) == 1

    # A private key from a file works the same way.
    private, public = rsa_key_pair()
    key_client = world.add_client(public_key=public)
    key_file = tmp_path / "client.pem"
    key_file.write_text(private)
    auth = json.dumps({"type": "oauth", "client_id": key_client})
    added = run(
        "services", "add", "--user", user, "--desc", "m2m-key", "--mode", "http", "--url", world.mcp_url,
        "--auth", auth, "--private-key-file", str(key_file),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert private.splitlines()[1] not in added.stdout
    assert run("services", "check", user, "m2m-key").returncode == 0
    assert world.admin("stats")["methods"][-1] == "private_key_jwt"


def test_the_cli_refuses_a_secret_on_its_command_line(world: OAuthWorld) -> None:
    auth = json.dumps({"type": "oauth", "client_id": "c", "client_secret": "on-argv"})
    refused = run(
        "services",
        "add",
        "--user",
        "u",
        "--desc",
        "d",
        "--mode",
        "http",
        "--url",
        world.mcp_url,
        "--auth",
        auth,
    )
    assert refused.returncode != 0 and "--client-secret-file" in refused.stderr
    no_oauth = run(
        "services", "add", "--user", "u", "--desc", "d", "--mode", "http", "--url", world.mcp_url,
        "--client-secret-env", "HOME",
    )  # fmt: skip
    assert no_oauth.returncode != 0 and "oauth" in no_oauth.stderr
    two_stdins = run(
        "services", "add", "--json", "-", "--client-secret-file", "-", stdin='{"user_id": "u"}',
    )  # fmt: skip
    assert two_stdins.returncode != 0 and "only one of" in two_stdins.stderr


@pytest.fixture
def seed_oauth_row(world: OAuthWorld) -> Iterator[dict[str, Any]]:
    """The seed's `user2/enterprise_reports` row as `db sample-data` writes it, its host the fake's
    SSE server; removed afterwards (other tests expect no sample rows)."""
    sample = next(s for s in SAMPLE_SERVICES if s["desc"] == "enterprise_reports")
    row = {**sample, "url": world.sse_url}
    with session_scope() as session:
        save_service(session, row, check_command=False)
    yield row
    with session_scope() as session:
        remove_service(session, row["user_id"], row["desc"])


def test_the_seed_oauth_sample_row_works_once_its_client_is_set(
    world: OAuthWorld, seed_oauth_row: dict[str, Any]
) -> None:
    """The seed's `user2/enterprise_reports` (SSE, `{"type": "oauth", "provider": "openproject"}`):
    a clear error until its client id and secret are set, then a working service."""
    assert seed_oauth_row["auth"] == {"type": "oauth", "provider": "openproject"}
    before = run("services", "check", "user2", "enterprise_reports")
    assert before.returncode != 0 and "client_id" in before.stderr

    secret = f"enterprise-{uuid.uuid4().hex}"
    client_id = world.add_client(secret=secret)
    auth = json.dumps({"type": "oauth", "provider": "openproject", "client_id": client_id})
    env = {**os.environ, "ENTERPRISE_CLIENT_SECRET": secret}
    added = run(
        "services", "add", "--user", "user2", "--desc", "enterprise_reports", "--mode", "sse",
        "--url", world.sse_url, "--endpoint", "https://enterprise.openproject.com",
        "--params", '{"project_id": 10, "include_archived": true}', "--auth", auth,
        "--client-secret-env", "ENTERPRISE_CLIENT_SECRET", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    after = run("services", "check", "user2", "enterprise_reports")
    assert after.returncode == 0, after.stderr
    assert "whoami" in after.stdout and world.token_requests(client_id) == 1


def test_client_secrets_and_tokens_are_encrypted_at_rest(world: OAuthWorld) -> None:
    key = Fernet.generate_key().decode()
    env = {**os.environ, "MCP_SECRET_KEY": key}
    user = f"enc-{uuid.uuid4().hex[:6]}"
    secret = f"enc-secret-{uuid.uuid4().hex}"
    client_id = world.add_client(secret=secret)
    auth = json.dumps({"type": "oauth", "client_id": client_id})
    added = run(
        "services", "add", "--user", user, "--desc", "enc", "--mode", "http", "--url", world.mcp_url,
        "--auth", auth, "--client-secret-file", "-", stdin=secret, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert run("services", "check", user, "enc", env=env).returncode == 0
    with session_scope() as session:
        service = session.scalars(sa.select(McpService).where(McpService.user_id == user)).one()
        token = session.scalars(sa.select(McpOAuthToken).where(McpOAuthToken.client_id == client_id)).one()
        stored_secret, stored_token = service.auth["client_secret"], token.access_token
    assert stored_secret.startswith("fernet:") and secret not in repr(service.auth)
    assert stored_token is not None and stored_token.startswith("fernet:")
    assert world.issued()[-1] not in stored_token


def test_the_token_store_works_on_the_embedded_sqlite_default(world: OAuthWorld, tmp_path: Path) -> None:
    """No DATABASE_URL: the tables live in SQLite. Concurrent CLI processes share one token (SQLite's
    write lock, taken by the upsert, serializes the fetch across them)."""
    env = clean_env(tmp_path, {"MCP_DATA_DIR": str(tmp_path / "data")})
    assert run("db", "upgrade", env=env).returncode == 0
    secret = f"sqlite-{uuid.uuid4().hex}"
    client_id = world.add_client(secret=secret)
    auth = json.dumps({"type": "oauth", "client_id": client_id})
    added = run(
        "services", "add", "--user", "lite", "--desc", "m2m", "--mode", "http", "--url", world.mcp_url,
        "--auth", auth, "--client-secret-file", "-", stdin=secret, env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    checks = [
        subprocess.Popen(
            [*CLI, "services", "check", "lite", "m2m"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(SQLITE_PROCESSES)
    ]
    for check in checks:
        _, err = check.communicate(timeout=120)
        assert check.returncode == 0, err
    assert world.token_requests(client_id) == 1
