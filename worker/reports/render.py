"""Compile and render report templates in the sandbox; map every failure to `TemplateError`.

Templates in `mcp_templates` are user content: anything they do wrong (a syntax error, an unsafe
attribute, a limit from `worker.reports.limits`, a Python error inside a filter) becomes a
one-line `TemplateError("template 'name' line N: what went wrong")`, never another exception.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Generator, Mapping
from contextlib import closing
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from celery.exceptions import SoftTimeLimitExceeded
from jinja2 import Template
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

from worker.errors import TemplateError
from worker.redaction import redact
from worker.reports.context import build_context
from worker.reports.limits import MAX_OUTPUT_CHARS, LimitExceeded, render_state
from worker.reports.sandbox import TEMPLATE_FILENAME, ReportEnvironment

__all__ = [
    "BUNDLED_TEMPLATE_NAMES",
    "RenderResult",
    "build_context",
    "bundled_template",
    "compile_template",
    "render_template",
]

BUNDLED_TEMPLATE_NAMES: tuple[str, ...] = ("weekly_report.j2", "executive_summary.j2")

# Compiled templates kept per process; the key is the whole source, so an edited template recompiles.
_COMPILED_CACHE_SIZE = 128
# Error messages are stored in a column and shown in Flower; the cause fits in one line.
_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class RenderResult:
    """A rendered report and the names it used that had no value (rendered as empty)."""

    text: str
    undefined: list[str]


@functools.cache
def _environment() -> ReportEnvironment:
    return ReportEnvironment()


def compile_template(name: str, source: str) -> None:
    """Check that `source` compiles in the report sandbox.

    Raises:
        TemplateError: it does not; the message names the template and the line.
    """
    _compiled(name, source)


def render_template(name: str, source: str, context: Mapping[str, Any]) -> RenderResult:
    """Render `source` with `context` in the report sandbox.

    Raises:
        TemplateError: the template does not compile, does something the sandbox refuses, hits a
            render limit, or fails while rendering; the message names the template and the line.
    """
    template = _compiled(name, source)
    chunks: list[str] = []
    size = 0
    with render_state() as state, closing(_generate(template, context)) as stream:
        try:
            for chunk in stream:
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    line = _suspended_line(template, stream)
                    raise _error(
                        name, line, LimitExceeded(f"output is longer than {MAX_OUTPUT_CHARS} characters")
                    )
                chunks.append(chunk)
        except (TemplateError, SoftTimeLimitExceeded):
            raise  # the task's time limit is the task's failure, not the template's
        except Exception as exc:  # user content: every failure is the template's, reported as such
            raise _error(name, _traceback_line(exc), exc) from exc
        return RenderResult(text="".join(chunks), undefined=list(state.undefined))


def _generate(template: Template, context: Mapping[str, Any]) -> Generator[str, None, None]:
    # `Template.generate` is a generator (typed as an iterator): closing it stops the template.
    return cast(Generator[str, None, None], template.generate(dict(context)))


def bundled_template(name: str) -> str | None:
    """The source of a template shipped in the package (`weekly_report.j2`), or None.

    The `.j2` suffix may be left out.
    """
    if not name.endswith(".j2"):
        name = f"{name}.j2"
    if name not in BUNDLED_TEMPLATE_NAMES:
        return None
    return _read_bundled(name)


@functools.cache
def _read_bundled(name: str) -> str:
    return (resources.files("worker.reports") / "templates" / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=_COMPILED_CACHE_SIZE)
def _compiled(name: str, source: str) -> Template:
    env = _environment()
    try:
        code = env.compile(source, name=name, filename=TEMPLATE_FILENAME)
        return env.template_class.from_code(env, code, env.make_globals(None), None)
    except TemplateSyntaxError as exc:
        raise _error(name, exc.lineno, exc) from exc
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:  # deep nesting (RecursionError), an over-long source, ...
        raise _error(name, _traceback_line(exc), exc) from exc


def _error(name: str, line: int | None, exc: BaseException) -> TemplateError:
    where = f"template {name!r} line {line}" if line else f"template {name!r}"
    # messages can quote report data, which came from an MCP server
    message = " ".join(redact(_describe(exc)).split())
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
    return TemplateError(f"{where}: {message}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    if isinstance(exc, LimitExceeded):
        return f"limit exceeded: {exc}"
    if isinstance(exc, SecurityError):
        return f"not allowed in a report template: {exc}"
    if isinstance(exc, UndefinedError):
        return f"undefined value: {exc}"
    if isinstance(exc, RecursionError):
        return "recursion too deep (a macro or loop that calls itself without end?)"
    if isinstance(exc, TypeError) and "no loader" in str(exc):
        return "report templates cannot include, import or extend other templates"
    return f"{type(exc).__name__}: {exc}"


def _traceback_line(exc: BaseException) -> int | None:
    # Jinja rewrites tracebacks so template frames carry the template's own line numbers.
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _suspended_line(template: Template, stream: Generator[str, None, None]) -> int | None:
    # The output limit trips between chunks, with the template's generator paused at a yield.
    frame = None
    gen: Any = stream
    while isinstance(gen, types.GeneratorType):
        if gen.gi_frame is not None and gen.gi_frame.f_code.co_filename == TEMPLATE_FILENAME:
            frame = gen.gi_frame
        gen = gen.gi_yieldfrom
    return template.get_corresponding_lineno(frame.f_lineno) if frame is not None else None
