"""Jinja's built-in filters and Python's string methods, with their size arguments checked.

Each replacement sizes its result from its inputs and raises `LimitExceeded` before building
anything over the limits in `worker.reports.limits`; the rest are wrapped so that no filter result
longer than MAX_VALUE_LENGTH reaches the template.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jinja2 import filters as jf
from jinja2.nodes import EvalContext
from jinja2.utils import pass_environment, pass_eval_context
from markupsafe import soft_str

from worker.reports.limits import (
    MAX_FORMAT_WIDTH,
    MAX_JSON_INDENT,
    MAX_RANGE_ITEMS,
    MAX_VALUE_LENGTH,
    LimitExceeded,
    check_int_arg,
    check_length,
    check_percent_format,
    check_size,
)

Filter = Callable[..., Any]


def _center(value: str, width: int = 80) -> str:
    check_int_arg(width, MAX_VALUE_LENGTH, "center width")
    return jf.do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    check_int_arg(width, MAX_FORMAT_WIDTH, "indent width")
    pad = len(width) if isinstance(width, str) else max(int(width), 0)
    text = soft_str(s)
    check_size(len(text) + (text.count("\n") + 1) * pad, "indented text")
    return jf.do_indent(s, width, first, blank)


@pass_environment
def _wordwrap(
    environment: Any,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text = soft_str(s)
    lines = len(text) // max(int(width), 1) + text.count("\n") + 1
    check_size(len(text) + lines * len(soft_str(wrapstring or environment.newline_sequence)), "wrapped text")
    return jf.do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    text, old_s, new_s = soft_str(s), soft_str(old), soft_str(new)
    hits = text.count(old_s) if old_s else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    check_size(len(text) + hits * (len(new_s) - len(old_s)), "the replace filter's result")
    return jf.do_replace(eval_ctx, s, old, new, count)


@pass_eval_context
def _join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    items = list(value)
    if attribute is not None:
        getter = jf.make_attrgetter(eval_ctx.environment, attribute)
        items = [getter(item) for item in items]
    sep = len(soft_str(d)) * max(len(items) - 1, 0)
    check_size(sep + sum(len(soft_str(item)) for item in items), "the join filter's result")
    return jf.sync_do_join(eval_ctx, items, d)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    check_percent_format(soft_str(value))
    return jf.do_format(value, *args, **kwargs)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Any:
    check_int_arg(linecount, MAX_VALUE_LENGTH, "batch size")
    return jf.do_batch(value, linecount, fill_with)


def _slice(value: Any, slices: int, fill_with: Any = None) -> Any:
    check_int_arg(slices, MAX_RANGE_ITEMS, "slice count")
    return jf.sync_do_slice(value, slices, fill_with)


@pass_environment
def _sum(
    environment: Any, iterable: Iterable[Any], attribute: str | int | None = None, start: Any = 0
) -> Any:
    # a list or string `start` turns sum into repeated concatenation, quadratic in time and memory
    if not isinstance(start, int | float):
        raise LimitExceeded("the sum filter's start must be a number")
    return jf.sync_do_sum(environment, iterable, attribute, start)


@pass_eval_context
def _tojson(eval_ctx: EvalContext, value: Any, indent: int | str | None = None) -> Any:
    size = len(indent) if isinstance(indent, str) else indent
    check_int_arg(size, MAX_JSON_INDENT, "tojson indent")
    return jf.do_tojson(eval_ctx, value, indent)  # type: ignore[arg-type]  # Jinja accepts str too


_REPLACEMENTS: dict[str, Filter] = {
    "batch": _batch,
    "center": _center,
    "format": _format,
    "indent": _indent,
    "join": _join,
    "replace": _replace,
    "slice": _slice,
    "sum": _sum,
    "tojson": _tojson,
    "wordwrap": _wordwrap,
}


def _length_checked(name: str, func: Filter) -> Filter:
    # functools.wraps copies `jinja_pass_arg`, so Jinja still passes the context/environment
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return check_length(func(*args, **kwargs), f"the {name} filter's result")

    return wrapper


def safe_filters(builtin: Mapping[str, Filter]) -> dict[str, Filter]:
    """Jinja's filters with size-taking ones replaced and every result length-checked."""
    chosen = {name: _REPLACEMENTS.get(name, func) for name, func in builtin.items()}
    return {name: _length_checked(name, func) for name, func in chosen.items()}


_STRING_TYPES = (str, bytes)


def check_method_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Size a call to a built-in method (`'x'.center(n)`, `sep.join(items)`) before it runs.

    Returns the positional arguments to call with (an iterator given to `join` is materialized so
    it can be measured).

    Raises:
        LimitExceeded: an integer argument is over MAX_VALUE_LENGTH, or the result would be.
    """
    if not isinstance(obj, types.BuiltinMethodType):
        return args
    for value in (*args, *kwargs.values()):
        check_int_arg(value, MAX_VALUE_LENGTH, f"argument to {obj.__name__}()")
    owner = obj.__self__
    if not isinstance(owner, _STRING_TYPES):
        return args
    name = obj.__name__
    if name == "join" and args:
        items = list(args[0])
        sizes = sum(len(item) for item in items if isinstance(item, _STRING_TYPES))
        check_size(sizes + len(owner) * max(len(items) - 1, 0), "the joined string")
        return (items, *args[1:])
    if name == "replace" and len(args) >= 2 and all(isinstance(a, _STRING_TYPES) for a in args[:2]):
        old, new = args[0], args[1]
        hits = owner.count(old) if old else len(owner) + 1
        check_size(len(owner) + hits * (len(new) - len(old)), "the replaced string")
    if name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        check_size(len(owner) + tabs * max(int(tab), 0), "the expanded string")
    return args
