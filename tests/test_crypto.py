"""Credentials encrypted at rest with MCP_SECRET_KEY (Fernet), rotation, and re-encryption."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from worker.db.models import McpService
from worker.errors import InvalidService
from worker.services.registry import resolve
from worker.services.store import reencrypt_all, save_service
from worker.settings import reset_settings

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
SECRET = "sk-live-encrypt-me-0123456789"
RECORD = {
    "user_id": "crypt",
    "desc": "svc",
    "interaction_mode": "sse",
    "url": "http://127.0.0.1:1/sse",
    "api_key": SECRET,
    "auth": {"type": "api_key", "value": SECRET},
}


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    def use(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("MCP_SECRET_KEY", raising=False)
        else:
            monkeypatch.setenv("MCP_SECRET_KEY", value)
        reset_settings()

    monkeypatch.use = use  # type: ignore[attr-defined]
    yield monkeypatch
    monkeypatch.undo()
    reset_settings()


def stored(session: Session) -> tuple[str, dict[str, object]]:
    row = session.scalars(sa.select(McpService).where(McpService.user_id == "crypt")).one()
    session.refresh(row)
    return row.api_key, dict(row.auth or {})


def test_new_rows_are_encrypted_and_resolve_to_the_plain_key(
    db_session: Session, secret_key: pytest.MonkeyPatch
) -> None:
    secret_key.use(KEY_A)  # type: ignore[attr-defined]
    save_service(db_session, RECORD)
    api_key, auth = stored(db_session)
    assert api_key.startswith("fernet:") and SECRET not in api_key
    assert str(auth["value"]).startswith("fernet:")
    config = resolve("crypt", "svc", db_session)
    assert config.api_key == SECRET and config.auth["value"] == SECRET


def test_rotation_and_reencryption(db_session: Session, secret_key: pytest.MonkeyPatch) -> None:
    secret_key.use(None)  # type: ignore[attr-defined]
    save_service(db_session, RECORD)
    assert stored(db_session)[0] == SECRET  # no key: stored as given
    secret_key.use(KEY_A)  # type: ignore[attr-defined]
    assert reencrypt_all(db_session) >= 1  # other tests' committed rows may be there too
    db_session.flush()
    under_a = stored(db_session)[0]
    assert under_a.startswith("fernet:")
    secret_key.use(f"{KEY_B},{KEY_A}")  # type: ignore[attr-defined]
    assert resolve("crypt", "svc", db_session).api_key == SECRET  # the old key still decrypts
    reencrypt_all(db_session)
    db_session.flush()
    secret_key.use(KEY_B)  # type: ignore[attr-defined]
    assert resolve("crypt", "svc", db_session).api_key == SECRET


@pytest.mark.parametrize(
    ("key", "message"),
    [(None, "MCP_SECRET_KEY is not set"), (KEY_B, "wrong key")],
    ids=["no-key", "wrong-key"],  # the key is random: parallel workers must collect the same ids
)
def test_an_encrypted_row_without_the_right_key_is_a_clear_error(
    db_session: Session, secret_key: pytest.MonkeyPatch, key: str | None, message: str
) -> None:
    secret_key.use(KEY_A)  # type: ignore[attr-defined]
    save_service(db_session, RECORD)
    secret_key.use(key)  # type: ignore[attr-defined]
    with pytest.raises(InvalidService, match=message) as info:
        resolve("crypt", "svc", db_session)
    assert SECRET not in str(info.value)
