"""Resource limits for report templates, and the checks that enforce them.

Jinja's `SandboxedEnvironment` stops a template from reaching Python internals, but not from
asking for a billion-character string or a billion loop iterations. Templates are user content,
so every way a template can make the worker allocate or compute something large is sized
*before* the work is done: binary operators, `range()`, the filters and string methods that take
a width or a count, and every buffer the compiled template joins. Loops and calls are counted
per render, with a wall-clock backstop for work the count cannot see.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

from jinja2.exceptions import SecurityError

# A report template is a page of Markdown; sources beyond this only make compiling slow.
MAX_SOURCE_CHARS = 100_000
# About a megabyte of Markdown is far past any readable report; a runaway loop stops here.
MAX_OUTPUT_CHARS = 1_000_000
# No string or list a template builds may exceed what it could print.
MAX_VALUE_LENGTH = 1_000_000
# Loops over report data iterate the data; range() is only for small tables and padding.
MAX_RANGE_ITEMS = 10_000
# Loop iterations plus calls in one render: a 10,000-item report needs tens of thousands, a bomb billions.
MAX_RENDER_STEPS = 200_000
# Wall-clock backstop for work the step count cannot see (sorting or joining big lists in C).
MAX_RENDER_SECONDS = 10.0
# Macro and recursive-loop nesting; stays far below Python's own recursion limit (~1000 frames).
MAX_CALL_DEPTH = 64
# Numbers in a report are small; products and powers of huge integers cost quadratic CPU.
MAX_INT_BITS = 4_096
# A padded column is never wider than this, and '%999999999s' would be a memory bomb.
MAX_FORMAT_WIDTH = 1_000
# JSON indentation deeper than this only multiplies the size of `tojson` output.
MAX_JSON_INDENT = 8

_SIZED = (str, bytes, list, tuple)
_PERCENT_SPEC = re.compile(r"%%|%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


class LimitExceeded(SecurityError):
    """A template asked for more than one of the render limits allows."""


@dataclass
class RenderState:
    """Per-render counters, held in a context variable while one template renders."""

    deadline: float
    steps: int = 0
    depth: int = 0
    undefined: list[str] = field(default_factory=list)

    def record_undefined(self, name: str) -> None:
        if name not in self.undefined:
            self.undefined.append(name)


_STATE: ContextVar[RenderState | None] = ContextVar("report_render_state", default=None)


@contextmanager
def render_state() -> Iterator[RenderState]:
    """Count steps, depth and undefined names for the render running in this context."""
    state = RenderState(deadline=time.monotonic() + MAX_RENDER_SECONDS)
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def current_state() -> RenderState | None:
    """The running render's state; None while compiling (Jinja folds constants at compile time)."""
    return _STATE.get()


def tick() -> RenderState | None:
    """Count one loop iteration or call against the render's budget.

    Raises:
        LimitExceeded: the render took more steps or more time than allowed.
    """
    state = _STATE.get()
    if state is None:
        return None
    state.steps += 1
    if state.steps > MAX_RENDER_STEPS:
        raise LimitExceeded(f"more than {MAX_RENDER_STEPS} loop iterations and calls (MAX_RENDER_STEPS)")
    if time.monotonic() > state.deadline:
        raise LimitExceeded(f"rendering took longer than {MAX_RENDER_SECONDS:g} s (MAX_RENDER_SECONDS)")
    return state


def check_length(value: Any, what: str) -> Any:
    """Return `value` unchanged if it is not a string or list longer than MAX_VALUE_LENGTH.

    Raises:
        LimitExceeded: it is.
    """
    if isinstance(value, _SIZED) and len(value) > MAX_VALUE_LENGTH:
        raise LimitExceeded(f"{what} would be {len(value)} long, over {MAX_VALUE_LENGTH} (MAX_VALUE_LENGTH)")
    return value


def check_size(size: int, what: str) -> None:
    """Refuse to build something of `size` characters or items.

    Raises:
        LimitExceeded: `size` is over MAX_VALUE_LENGTH.
    """
    if size > MAX_VALUE_LENGTH:
        raise LimitExceeded(f"{what} would be {size} long, over {MAX_VALUE_LENGTH} (MAX_VALUE_LENGTH)")


def check_int_arg(value: Any, limit: int, what: str) -> None:
    """Refuse an integer argument (a width, count or indent) larger than `limit`.

    Raises:
        LimitExceeded: it is larger.
    """
    if isinstance(value, int) and abs(value) > limit:
        raise LimitExceeded(f"{what} of {value} is over the limit of {limit}")


def capped_range(*args: int) -> range:
    """`range()` for templates: at most MAX_RANGE_ITEMS items.

    Raises:
        LimitExceeded: the range would be longer.
    """
    rng = range(*args)
    if len(rng) > MAX_RANGE_ITEMS:
        raise LimitExceeded(f"range() of {len(rng)} items is over {MAX_RANGE_ITEMS} (MAX_RANGE_ITEMS)")
    return rng


def check_percent_format(fmt: str) -> None:
    """Refuse `%`-format widths that would allocate a huge string.

    Raises:
        LimitExceeded: a width or precision is over MAX_FORMAT_WIDTH, or given as `*`.
    """
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                raise LimitExceeded("'*' widths in % formats are not allowed")
            if part is not None and int(part) > MAX_FORMAT_WIDTH:
                raise LimitExceeded(f"format width {part} is over {MAX_FORMAT_WIDTH} (MAX_FORMAT_WIDTH)")


def check_brace_format(fmt: str) -> None:
    """Refuse `str.format` specs that nest fields or ask for huge widths.

    Raises:
        LimitExceeded: a spec nests a field (its width would come from data) or is too wide.
        ValueError: the format string does not parse.
    """
    for _literal, _field, spec, _conversion in Formatter().parse(fmt):
        if not spec:
            continue
        if "{" in spec:
            raise LimitExceeded("nested fields in format specs are not allowed")
        for digits in re.findall(r"\d+", spec):
            if len(digits) > 9 or int(digits) > MAX_FORMAT_WIDTH:
                raise LimitExceeded(f"format width {digits} is over {MAX_FORMAT_WIDTH} (MAX_FORMAT_WIDTH)")


def guarded_binop(operator: str, left: Any, right: Any) -> None:
    """Size the result of `*`, `**`, `+` or `%` before Python computes it.

    Raises:
        LimitExceeded: the result would be too long a sequence or too big a number.
    """
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, _SIZED) and isinstance(count, int):
                check_size(len(seq) * max(count, 0), "a repeated string or list")
        if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise LimitExceeded(f"a product of more than {MAX_INT_BITS} bits (MAX_INT_BITS)")
    elif operator == "**":
        big = _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1
        if big and right * math.log2(abs(left)) > MAX_INT_BITS:
            raise LimitExceeded(f"a power of more than {MAX_INT_BITS} bits (MAX_INT_BITS)")
    elif operator == "+":
        if isinstance(left, _SIZED) and isinstance(right, _SIZED):
            check_size(len(left) + len(right), "a concatenation")
    elif operator == "%" and isinstance(left, str):
        check_percent_format(left)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def guarded_join(parts: Iterable[str]) -> str:
    """`"".join` for the template's output buffers, refusing to build an oversized string.

    Raises:
        LimitExceeded: the joined text would be longer than MAX_VALUE_LENGTH.
    """
    collected: list[str] = []
    size = 0
    for part in parts:
        size += len(part)
        check_size(size, "a block of template output")
        collected.append(part)
    return "".join(collected)
