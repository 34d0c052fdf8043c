"""Webhook signatures: HMAC-SHA256 over the timestamp and the body.

The receiver gets `X-MCP-Timestamp: <unix seconds>` and `X-MCP-Signature: v1=<hex>`, where the hex
is HMAC-SHA256(secret, "<timestamp>." + body). Signing the timestamp with the body lets a
receiver refuse replays older than it tolerates (`verify`'s `tolerance_s`).
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-MCP-Timestamp"
SIGNATURE_HEADER = "X-MCP-Signature"
DELIVERY_HEADER = "X-MCP-Delivery"
VERSION = "v1"
# What `verify` accepts by default: a signature at most five minutes old (or ahead).
DEFAULT_TOLERANCE_S = 300.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{VERSION}={mac.hexdigest()}"


def sign(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The signature headers for `body`."""
    timestamp = int(now if now is not None else time.time())
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: str,
    body: bytes,
    timestamp: str,
    signed: str,
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when `signed` is the signature of `body` at `timestamp` and the timestamp is fresh."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - stamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, stamp, body), signed)
