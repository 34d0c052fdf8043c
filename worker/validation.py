"""Checks on what producers send, shared by the producer API and the tasks.

A request that fails here is refused before anything is written or enqueued.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from worker.errors import InvalidArguments
from worker.registry import DESC_MAX, USER_ID_MAX

TOOL_NAME_MAX = 255


def _name(value: object, what: str, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArguments(f"{what} is required and must be a non-empty string, got {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidArguments(f"{what} is longer than {max_len} characters")
    return value


def validate_tool_request(
    user_id: object, service: object, tool: object, arguments: object, *, max_argument_bytes: int
) -> tuple[str, str, str, dict[str, Any]]:
    """Check a tool call's fields and return them typed.

    Raises:
        InvalidArguments: a field is missing, of the wrong type or too large.
    """
    user = _name(user_id, "user_id", USER_ID_MAX)
    desc = _name(service, "service", DESC_MAX)
    name = _name(tool, "tool", TOOL_NAME_MAX)
    args = validate_arguments(arguments, max_argument_bytes=max_argument_bytes)
    return user, desc, name, args


def validate_arguments(arguments: object, *, max_argument_bytes: int) -> dict[str, Any]:
    """`arguments` as a dict after checking it is a JSON object of bounded size.

    Raises:
        InvalidArguments: not an object, not JSON-serialisable, or larger than the limit.
    """
    if arguments is None:
        return {}
    if not isinstance(arguments, Mapping):
        raise InvalidArguments(f"arguments must be a JSON object, got {type(arguments).__name__}")
    if not all(isinstance(k, str) for k in arguments):
        raise InvalidArguments("arguments keys must be strings")
    try:
        size = len(json.dumps(arguments, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise InvalidArguments(f"arguments are not plain JSON: {exc}") from None
    if size > max_argument_bytes:
        raise InvalidArguments(
            f"arguments are {size} bytes, over MCP_MAX_ARGUMENT_BYTES ({max_argument_bytes})"
        )
    return dict(arguments)
