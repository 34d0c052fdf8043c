"""The sandbox: escapes and resource bombs become TemplateError with a clear one-line message."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import TemplateError
from worker.reports import render_template
from worker.reports.limits import MAX_OUTPUT_CHARS

ESCAPES = {
    "str mro": "{{ ''.__class__.__mro__ }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__ }}",
    "joiner os": "{{ joiner.__init__.__globals__.os }}",
    "namespace globals": "{{ namespace.__init__.__globals__ }}",
    "self init": "{{ self.__init__ }}",
    "self module": "{{ self._TemplateReference__context }}",
    "lipsum globals": "{{ lipsum.__globals__ }}",
    "request-less config": "{{ config.__class__.__init__.__globals__ }}",
    "item syntax": "{{ ''['__class__'] }}",
    "attr filter": "{{ ''|attr('__class__') }}",
    "format attribute": "{{ '{0.__class__}'.format('') }}",
    "private attribute": "{{ project._secret }}",
    "function globals": "{{ range.__self__ }}",
    "dict mutation": "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "list mutation": "{{ work_packages.append(1) }}",
}

BOMBS = {
    "huge range": ("{% for i in range(10**9) %}{{ i }}{% endfor %}", "range() of 1000000000 items"),
    "string multiplication": ("{{ 'x' * 10**9 }}", "MAX_VALUE_LENGTH"),
    "list multiplication": ("{{ ([1] * 100000) * 100000 }}", "MAX_VALUE_LENGTH"),
    "power": ("{{ 9 ** (9 ** 9) }}", "MAX_INT_BITS"),
    "recursive macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "MAX_CALL_DEPTH"),
    "branching macro": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        "MAX_RENDER_STEPS",
    ),
    "nested loops": (
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "MAX_RENDER_STEPS",
    ),
    "filtered loops": (
        "{% for i in range(10000) %}{% for j in range(10000) if false %}{% endfor %}{% endfor %}",
        "MAX_RENDER_STEPS",
    ),
    "doubling with ~": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "MAX_VALUE_LENGTH",
    ),
    "doubling in a block": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set b %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = b %}{% endfor %}",
        "MAX_VALUE_LENGTH",
    ),
    "percent width": ("{{ '%999999999s' % 'x' }}", "MAX_FORMAT_WIDTH"),
    "star width": ("{{ '%*s' % (999999999, 'x') }}", "'*' widths"),
    "format width": ("{{ '{:>999999999}'.format('x') }}", "MAX_FORMAT_WIDTH"),
    "format filter": ("{{ '%0999999999d'|format(1) }}", "MAX_FORMAT_WIDTH"),
    "center filter": ("{{ 'x'|center(999999999) }}", "center width"),
    "string method": ("{{ 'x'.ljust(999999999) }}", "ljust()"),
    "join with a big separator": ("{{ range(10000)|join('x' * 1000) }}", "join filter"),
    "replace": ("{{ ('x' * 100000)|replace('x', 'y' * 100) }}", "replace filter"),
    "tojson indent": ("{{ work_packages|tojson(indent=100000) }}", "tojson indent"),
    "sum of lists": ("{{ ([[1] * 1000] * 1000)|sum(start=[]) }}", "start must be a number"),
    "output size": (
        "{% for i in range(10000) %}{{ 'x' * 1000 }}\n{% endfor %}",
        f"output is longer than {MAX_OUTPUT_CHARS}",
    ),
}


@pytest.mark.parametrize("source", ESCAPES.values(), ids=ESCAPES.keys())
def test_escapes_are_template_errors(source: str, context: dict[str, Any]) -> None:
    with pytest.raises(TemplateError) as info:
        render_template("evil.j2", source, context)

    message = str(info.value)
    assert message.startswith("template 'evil.j2' line 1: not allowed in a report template: ")
    assert "\n" not in message


@pytest.mark.parametrize(("source", "expected"), BOMBS.values(), ids=BOMBS.keys())
def test_resource_bombs_are_template_errors(source: str, expected: str, context: dict[str, Any]) -> None:
    with pytest.raises(TemplateError) as info:
        render_template("bomb.j2", source, context)

    message = str(info.value)
    assert message.startswith("template 'bomb.j2' line 1: limit exceeded: ")
    assert expected in message
    assert "\n" not in message


def test_the_limit_reports_the_line_that_hit_it(context: dict[str, Any]) -> None:
    source = "# Report\n\n{% for i in range(20000) %}x{% endfor %}"

    with pytest.raises(TemplateError, match=r"^template 'r.j2' line 3: limit exceeded: range\(\) of 20000"):
        render_template("r.j2", source, context)


def test_data_keys_starting_with_underscore_are_readable() -> None:
    result = render_template(
        "hal.j2", "{{ wp._links.self.href }}", {"wp": {"_links": {"self": {"href": "/wp/1"}}}}
    )
    assert result.text == "/wp/1"


def test_ordinary_template_features_still_work(context: dict[str, Any]) -> None:
    source = (
        "{% set ns = namespace(n=0) %}{% for w in work_packages if w.assignee %}{% set ns.n = ns.n + 1 %}"
        "{% endfor %}{{ ns.n }}|{{ '%-6s|%5.1f' % ('ab', 2.25) }}|{{ '{:>4}'.format(7) }}|"
        "{{ work_packages|map(attribute='id')|join(',') }}|{{ 'a b'|replace(' ', '-') }}|"
        "{{ range(3)|list }}|{{ 2 ** 10 }}|{{ 'ab' * 3 }}|{{ [1, 2]|sum }}|{{ 'x'|center(5) }}|"
        "{{ dict(a=1)|tojson }}|{{ totals_by_status|dictsort|first|first }}"
    )

    result = render_template("ok.j2", source, context)

    assert (
        result.text == '5|ab    |  2.2|   7|1,2,3,4,5,6,7|a-b|[0, 1, 2]|1024|ababab|3|  x  |{"a": 1}|Blocked'
    )


def test_recursive_loops_work_within_the_depth_limit() -> None:
    tree = {"name": "a", "children": [{"name": "b", "children": [{"name": "c", "children": []}]}]}
    source = "{% for n in [tree] recursive %}{{ n.name }}{% if n.children %}({{ loop(n.children) }}){% endif %}{% endfor %}"

    assert render_template("tree.j2", source, {"tree": tree}).text == "a(b(c))"
