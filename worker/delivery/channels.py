"""Delivery channels as stored on a schedule: checked when saved, secrets encrypted at rest.

A channel is a small JSON object in `mcp_report_schedules.channels` (and copied onto each
delivery row, so a later edit of the schedule does not change a delivery already logged):

    {"type": "email",   "key": ..., "to": "ops@example.com"}
    {"type": "slack",   "key": ..., "url": "<encrypted incoming-webhook URL>"}
    {"type": "webhook", "key": ..., "url": "https://hooks.example.com/mcp", "secret": "<encrypted>"}

`key` is stable per channel (a hash of the address or URL) and makes a delivery row unique per
report and channel. A Slack incoming-webhook URL is a credential (its path is the token), so it
is encrypted like `api_key` (`worker.services.crypto`, MCP_SECRET_KEY) and shown by host only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker.errors import InvalidArguments, InvalidService
from worker.services.config import check_http_url
from worker.services.crypto import decrypt, encrypt
from worker.settings import Settings, get_settings

CHANNEL_TYPES = ("email", "slack", "webhook")
# RFC 5321: 64 for the local part, 254 for the whole path.
MAX_ADDRESS_LEN = 254
# A webhook secret shorter than this is too easy to guess for an HMAC key.
MIN_SECRET_LEN = 16
MAX_SECRET_LEN = 512
# Deliberately strict: one local part and a dotted domain (or localhost), no display names, no
# spaces, no quoted forms; what an operator types for a report recipient.
_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)$"
)


@dataclass(frozen=True)
class Channel:
    """A channel with its secrets in plain text (only ever in memory, for sending)."""

    type: str
    key: str
    to: str | None = None
    url: str | None = None
    secret: str | None = None

    @property
    def target(self) -> str:
        """What logs and the CLI show: the address, or the URL without its secret parts."""
        if self.type == "email":
            return str(self.to)
        parts = urlsplit(self.url or "")
        if self.type == "slack":
            return f"slack {parts.scheme}://{parts.netloc}/..."
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def secrets(self) -> list[str]:
        values = [self.secret] if self.secret else []
        if self.type == "slack" and self.url:
            values.append(self.url)
        return values


def _key(kind: str, identity: str) -> str:
    return f"{kind}:{hashlib.sha256(identity.encode()).hexdigest()[:24]}"


def check_address(value: object) -> str:
    """An email address as given, checked.

    Raises:
        InvalidArguments: not one plain address.
    """
    if not isinstance(value, str) or len(value) > MAX_ADDRESS_LEN or not _ADDRESS.match(value.strip()):
        raise InvalidArguments(
            f"{value!r} is not an email address (write one plain address such as ops@example.com)"
        )
    return value.strip()


def check_url(value: object, what: str, settings: Settings) -> str:
    """A webhook URL: http(s), with a host in MCP_ALLOWED_HOSTS when that is set.

    Raises:
        InvalidArguments: it is not.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidArguments(f"the {what} URL is empty")
    url = value.strip()
    try:
        check_http_url(url, settings)
    except ValueError as exc:
        # the message may quote the URL; a Slack URL is a credential
        shown = urlsplit(url).hostname if what == "Slack webhook" else None
        reason = str(exc) if shown is None else f"host {shown!r} refused or not an http(s) URL"
        raise InvalidArguments(f"the {what} URL is not allowed: {reason}") from None
    return url


def email_channel(address: str) -> Channel:
    to = check_address(address)
    return Channel("email", _key("email", to.lower()), to=to)


def slack_channel(url: str, settings: Settings | None = None) -> Channel:
    checked = check_url(url, "Slack webhook", settings or get_settings())
    return Channel("slack", _key("slack", checked), url=checked)


def webhook_channel(url: str, secret: str, settings: Settings | None = None) -> Channel:
    checked = check_url(url, "webhook", settings or get_settings())
    secret = secret.strip() if isinstance(secret, str) else ""
    if not MIN_SECRET_LEN <= len(secret) <= MAX_SECRET_LEN:
        raise InvalidArguments(
            f"the webhook secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters "
            "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return Channel("webhook", _key("webhook", checked), url=checked, secret=secret)


def stored(channels: Iterable[Channel], keys: str | None = None) -> list[dict[str, Any]]:
    """Channels as stored: secrets encrypted with MCP_SECRET_KEY (as given without a key). The
    same channel given twice is stored once."""
    keys = keys if keys is not None else get_settings().secret_key
    out: dict[str, dict[str, Any]] = {}
    for ch in channels:
        item: dict[str, Any] = {"type": ch.type, "key": ch.key}
        if ch.type == "email":
            item["to"] = ch.to
        elif ch.type == "slack":
            item["url"] = encrypt(str(ch.url), keys)
        else:
            item["url"] = ch.url
            item["secret"] = encrypt(str(ch.secret), keys)
        out.setdefault(ch.key, item)
    return list(out.values())


def loaded(item: Mapping[str, Any], keys: str | None = None) -> Channel:
    """A stored channel with its secrets decrypted.

    Raises:
        InvalidArguments: the stored object is not a channel, or its secret does not decrypt.
    """
    keys = keys if keys is not None else get_settings().secret_key
    kind = item.get("type") if isinstance(item, Mapping) else None
    if kind not in CHANNEL_TYPES or not isinstance(item.get("key"), str):
        raise InvalidArguments(f"a stored delivery channel is not one of {', '.join(CHANNEL_TYPES)}")
    try:
        if kind == "email":
            return Channel("email", item["key"], to=str(item.get("to")))
        if kind == "slack":
            return Channel("slack", item["key"], url=decrypt(str(item.get("url", "")), keys))
        return Channel(
            "webhook",
            item["key"],
            url=str(item.get("url")),
            secret=decrypt(str(item.get("secret", "")), keys),
        )
    except InvalidService:
        raise InvalidArguments(
            f"the {kind} channel's secret is encrypted and does not decrypt with MCP_SECRET_KEY (unset or another key)"
        ) from None


def describe(items: Iterable[Mapping[str, Any]] | None) -> list[dict[str, str]]:
    """Stored channels as shown to an operator: type and target, never a secret."""
    shown = []
    for item in items or []:
        kind = str(item.get("type"))
        if kind == "email":
            target = str(item.get("to"))
        elif kind == "slack":
            encrypted = str(item.get("url", "")).startswith("fernet:")
            target = "slack (incoming webhook" + (", stored encrypted)" if encrypted else ")")
        else:
            parts = urlsplit(str(item.get("url", "")))
            target = f"{parts.scheme}://{parts.netloc}{parts.path} (signed)"
        shown.append({"type": kind, "target": target})
    return shown
