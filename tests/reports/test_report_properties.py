"""Property: whatever the template source, rendering returns a RenderResult or raises TemplateError."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import TemplateError
from worker.reports import RenderResult, build_context, render_template

from .conftest import PERIOD, sample_data

CONTEXT = build_context(sample_data(), PERIOD)

NUMBERS = st.sampled_from(["0", "1", "2", "-1", "3.5", "10", "1000", "10**6", "10**9", "2**64"])
STRINGS = st.sampled_from(["''", "'x'", "'%s'", "'{}'", "'{:>9}'", "'a,b'", "'%d'", "'\\n'"])
NAMES = st.sampled_from(
    ["project", "project.name", "work_packages", "total", "totals_by_status", "overdue", "missing",
     "missing.attr", "work_packages[0]", "work_packages[0].subject", "range", "cycler", "joiner",
     "namespace", "dict", "self", "loop", "lipsum", "x", "''.__class__", "project._x"]
)  # fmt: skip
BINOPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "~", "==", "<", "and", "or", "in"])
FILTERS = st.sampled_from(
    ["length", "upper", "first", "last", "list", "sum", "int", "string", "join(',')", "default('d')",
     "center(9)", "replace('a', 'bb')", "sort", "unique", "reverse", "tojson", "batch(2)", "slice(3)",
     "selectattr('status', 'equalto', 'New')", "map(attribute='id')", "dictsort", "format(1)",
     "indent(2)", "wordwrap(5)", "round", "abs", "attr('name')", "items", "count", "trim", "title"]
)  # fmt: skip


def expressions() -> st.SearchStrategy[str]:
    leaves = st.one_of(NUMBERS, STRINGS, NAMES, NUMBERS.map(lambda n: f"range({n})"))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            # mostly well-formed expressions, so that many templates render; a few odd calls
            st.tuples(inner, BINOPS, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, FILTERS).map(lambda t: f"{t[0]}|{t[1]}"),
            st.tuples(inner, FILTERS).map(lambda t: f"{t[0]}|{t[1]}"),
            st.lists(inner, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
            st.tuples(
                inner, st.sampled_from(["upper()", "split(',')", "items()", "get('x')", "__class__"])
            ).map(lambda t: f"{t[0]}.{t[1]}"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]"),
        ),
        max_leaves=6,
    )


def templates() -> st.SearchStrategy[str]:
    expr = expressions()
    clean = st.sampled_from(["", "# Title\n", "- ", "\n", "x", "}", "%"])
    junk = st.sampled_from(["{", "{{", "}}", "{%", "%}", "{#"])  # rarer: they are mostly syntax errors
    text = st.one_of(clean, clean, clean, junk)
    return st.recursive(
        st.one_of(text, expr.map(lambda e: f"{{{{ {e} }}}}")),
        lambda body: st.one_of(
            st.lists(body, min_size=2, max_size=4).map("".join),
            st.tuples(expr, body).map(lambda t: f"{{% for i in {t[0]} %}}{t[1]}{{% endfor %}}"),
            st.tuples(expr, body).map(lambda t: f"{{% for i in {t[0]} if i %}}{t[1]}{{% else %}}-{{% endfor %}}"),
            st.tuples(expr, body, body).map(lambda t: f"{{% if {t[0]} %}}{t[1]}{{% else %}}{t[2]}{{% endif %}}"),
            st.tuples(expr, body).map(lambda t: f"{{% set v = {t[0]} %}}{t[1]}{{{{ v }}}}"),
            st.tuples(body, expr).map(
                lambda t: f"{{% macro m(a) %}}{t[0]}{{{{ m(a) if a else a }}}}{{% endmacro %}}{{{{ m({t[1]}) }}}}"
            ),
            body.map(lambda b: f"{{% set ns = namespace(s='x') %}}{{% for i in range(12) %}}{b}"
                               f"{{% set ns.s = ns.s ~ ns.s %}}{{% endfor %}}"),
        ),
        max_leaves=6,
    )  # fmt: skip


def check(source: str, context: dict[str, Any]) -> None:
    try:
        result = render_template("prop.j2", source, context)
    except TemplateError as exc:
        message = str(exc)
        assert message.startswith("template 'prop.j2'")
        assert "\n" not in message
    else:
        assert isinstance(result, RenderResult)
        assert isinstance(result.text, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(templates())
def test_grammar_templates_render_or_raise_template_error(source: str) -> None:
    check(source, CONTEXT)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}%#()[]|.~*+-'\" \nxyz019_")) | st.characters(), max_size=200))
def test_arbitrary_text_renders_or_raises_template_error(source: str) -> None:
    check(source, CONTEXT)
