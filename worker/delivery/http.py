"""Slack incoming webhooks and signed generic webhooks: one POST each, its answer classified.

2xx is delivered; 408, 429 (with its Retry-After) and 5xx are worth retrying, like connection
errors and timeouts; any other status (4xx, and 3xx: redirects are not followed, the URL was
checked against MCP_ALLOWED_HOSTS as written) fails at once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2

from worker.delivery.errors import DeliveryRefused, DeliveryUnavailable
from worker.delivery.signing import DELIVERY_HEADER, sign

# Slack's incoming webhooks cut a message's text at 40,000 characters, and a section of blocks at
# 3,000; the summary stays within one section.
SLACK_MAX_TEXT = 3000
# A Retry-After further out than this is capped: the task's own backoff cap applies too.
MAX_RETRY_AFTER_S = 3600.0
_RETRY_STATUSES = frozenset({408, 425, 429})
# The receiver's answer quoted in the delivery row's error, at most.
_MAX_BODY_QUOTE = 200


def slack_payload(summary: str, text: str, report_ref: str) -> dict[str, Any]:
    """The Slack message: the report's summary, then as much of its text as fits."""
    head = f"*{summary}*\n"
    room = SLACK_MAX_TEXT - len(head)
    body = (
        text
        if len(text) <= room
        else text[: room - len(report_ref) - 30].rstrip() + f"\n… (cut; {report_ref})"
    )
    return {"text": head + body, "mrkdwn": True}


def post_slack(url: str, payload: dict[str, Any], timeout: float) -> int:
    return _post(url, json.dumps(payload).encode(), {}, timeout, "Slack")


def post_webhook(url: str, body: dict[str, Any], secret: str, delivery_id: int, timeout: float) -> int:
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    headers = {**sign(secret, raw), DELIVERY_HEADER: str(delivery_id)}
    return _post(url, raw, headers, timeout, "webhook")


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float, what: str) -> int:
    """POST `body`; the status code when it was taken.

    Raises:
        DeliveryUnavailable: connection error, timeout, 408/425/429 or 5xx.
        DeliveryRefused: any other non-2xx status.
    """
    try:
        with httpx2.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = client.post(
                url,
                content=body,
                headers={"Content-Type": "application/json", "User-Agent": "mcp-worker", **headers},
            )
    except httpx2.TimeoutException:
        raise DeliveryUnavailable(f"{what} timed out after {timeout:.0f} s") from None
    except httpx2.TransportError as exc:
        raise DeliveryUnavailable(f"{what} unreachable: {type(exc).__name__}: {exc}") from None
    code = response.status_code
    if 200 <= code < 300:
        return code
    quoted = " ".join(response.text[:_MAX_BODY_QUOTE].split())
    message = f"{what} answered HTTP {code}" + (f": {quoted}" if quoted else "")
    if code in _RETRY_STATUSES or code >= 500:
        raise DeliveryUnavailable(
            message, retry_after=retry_after(response.headers.get("Retry-After")), code=code
        )
    raise DeliveryRefused(message, code=code)


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (seconds, or an HTTP date), capped; None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - (now or datetime.now(UTC))).total_seconds(), 0.0), MAX_RETRY_AFTER_S)
