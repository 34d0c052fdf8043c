"""The Jinja2 environment report templates run in: sandboxed, immutable, and bounded.

On top of Jinja's `ImmutableSandboxedEnvironment` (no `_`-names, no Python internals, no mutating
`list.append`/`dict.update`):

- any attribute or key starting with `_` is refused at once with a `SecurityError` (Jinja's own
  sandbox returns an undefined value that fails only when printed);
- `*`, `**`, `+` and `%`, `~`, the output buffers, `range()`, the size-taking filters and string
  methods are sized before they run (`worker.reports.limits`);
- every loop iteration and every call counts against a per-render step budget, calls nest at most
  MAX_CALL_DEPTH deep, and a render stops after MAX_RENDER_SECONDS;
- undefined names render as empty (even `x.y` on an undefined `x`) and are recorded;
- `lipsum` is gone, and templates cannot include, import or extend other templates (no loader).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateRuntimeError, UndefinedError
from jinja2.runtime import ChainableUndefined, Context, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace, missing
from markupsafe import soft_str

from worker.reports.limits import (
    MAX_CALL_DEPTH,
    MAX_SOURCE_CHARS,
    LimitExceeded,
    capped_range,
    check_brace_format,
    check_length,
    check_size,
    current_state,
    guarded_binop,
    guarded_join,
    tick,
)
from worker.reports.safe_filters import check_method_call, safe_filters

# The file name compiled templates carry, so tracebacks can be mapped back to template lines.
TEMPLATE_FILENAME = "<report template>"


class RecordingUndefined(ChainableUndefined):
    """Renders as empty, chains through `.attr`/`[key]`, and records its name in the render."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
    ) -> None:
        super().__init__(hint, obj, name, exc)
        state = current_state()
        if state is not None and name is not None:
            state.record_undefined(_describe_missing(obj, name))


def _describe_missing(obj: Any, name: Any) -> str:
    if obj is missing or isinstance(obj, ChainableUndefined):
        return str(name)
    owner = type(obj).__name__
    return f"{owner}.{name}" if isinstance(name, str) else f"{owner}[{name!r}]"


def concat_values(values: tuple[Any, ...], autoescape: bool) -> str:
    """The `~` operator, sized before the string is built.

    Raises:
        LimitExceeded: the result would be longer than MAX_VALUE_LENGTH.
    """
    texts = [soft_str(value) for value in values]
    check_size(sum(len(text) for text in texts), "a ~ concatenation")
    return markup_join(texts) if autoescape else "".join(texts)


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # Jinja joins `~` operands with a module-level helper nothing can intercept; route it
        # through the environment so doubling a string in a loop stops at MAX_VALUE_LENGTH.
        self.write("environment.concat_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("), context.eval_ctx.autoescape)")


def _private(name: Any) -> bool:
    return isinstance(name, str) and name.startswith("_")


def _refuse_private(obj: Any, name: str) -> SecurityError:
    if isinstance(obj, ChainableUndefined):
        return SecurityError(f"access to {name!r} is not allowed (and {obj._undefined_name!r} is undefined)")
    return SecurityError(f"access to {name!r} of a {type(obj).__name__!r} object is not allowed")


class ReportEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox for user-written report templates (Markdown output, no autoescaping)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _GuardedCodeGenerator
    concat = staticmethod(guarded_join)
    concat_values = staticmethod(concat_values)

    def __init__(self) -> None:
        super().__init__(autoescape=False, undefined=RecordingUndefined)
        self.globals.clear()
        self.globals.update(range=capped_range, dict=dict, cycler=Cycler, joiner=Joiner, namespace=Namespace)
        self.filters = safe_filters(self.filters)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        if len(source) > MAX_SOURCE_CHARS:
            raise LimitExceeded(f"template source is {len(source)} characters, over {MAX_SOURCE_CHARS}")
        tree = super()._parse(source, name, filename)
        # Count every loop iteration (and every item a loop's `if` filters out) as a step.
        for loop in list(tree.find_all(nodes.For)):
            loop.body.insert(0, nodes.ExprStmt(self._tick_call(loop.lineno), lineno=loop.lineno))
            if loop.test is not None:
                loop.test = nodes.And(self._tick_call(loop.lineno), loop.test, lineno=loop.lineno)
        tree.set_environment(self)
        return tree

    @staticmethod
    def _tick_call(lineno: int) -> nodes.Call:
        call = nodes.Call(nodes.EnvironmentAttribute("loop_step"), [], [], None, None, lineno=lineno)
        call.set_lineno(lineno)
        return call

    @staticmethod
    def loop_step() -> bool:
        """A no-op the compiled loops call; the step is counted by `call`."""
        return True

    def getattr(self, obj: Any, attribute: str) -> Any:
        if _private(attribute):
            if isinstance(obj, Mapping) and attribute in obj:
                return obj[attribute]  # a data key such as `_links` is data, not an attribute
            raise _refuse_private(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if _private(argument) and not (isinstance(obj, Mapping) and argument in obj):
            raise _refuse_private(obj, argument)
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Jinja returns an undefined that fails only when printed; fail at the access instead.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            check_brace_format(value.__self__)
        return wrapped

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        guarded_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        state = tick()
        args = check_method_call(obj, args, kwargs)
        if state is None:
            return super().call(context, obj, *args, **kwargs)
        if state.depth >= MAX_CALL_DEPTH:
            raise LimitExceeded(
                f"macros or recursive loops nested more than {MAX_CALL_DEPTH} deep (MAX_CALL_DEPTH)"
            )
        state.depth += 1
        try:
            result = super().call(context, obj, *args, **kwargs)
        finally:
            state.depth -= 1
        return check_length(result, "a call's result")
