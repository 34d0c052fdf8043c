"""Checks on what producers send, shared by the producer API and the tasks.

A request that fails here is refused before anything is written or enqueued.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from worker.errors import InvalidArguments

# Column widths of mcp_services.user_id and .desc (the seed schema).
USER_ID_MAX = 50
DESC_MAX = 255
TOOL_NAME_MAX = 255
TEMPLATE_NAME_MAX = 100
PERIOD = re.compile(r"^\d{4}-W(0[1-9]|[1-4]\d|5[0-3])$")


def _name(value: object, what: str, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArguments(
            f"{what} is required and must be a non-empty string, got {type(value).__name__}"
        )
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


def validate_report_request(
    template: object, period: object, refine: object
) -> tuple[str | None, str | None, bool | None]:
    """Check the optional report fields.

    Raises:
        InvalidArguments: a field has the wrong type or form.
    """
    if template is not None and (
        not isinstance(template, str) or not template or len(template) > TEMPLATE_NAME_MAX
    ):
        raise InvalidArguments(f"template must be a template name of at most {TEMPLATE_NAME_MAX} characters")
    if period is not None and (not isinstance(period, str) or not PERIOD.match(period)):
        raise InvalidArguments(f"period must be an ISO week such as 2026-W47, got {period!r}")
    if refine is not None and not isinstance(refine, bool):
        raise InvalidArguments(f"refine must be true, false or null, got {refine!r}")
    return template, period, refine
