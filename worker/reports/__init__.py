"""Weekly reports: build the template context, render in a hardened sandbox, refine with OpenAI.

    context = build_context(data, "2026-W47")                  # the data tool's output + counts
    result = render_template(name, source, context)            # TemplateError on any failure
    outcome = refine_report(result.text, settings=settings,
                            facts=required_facts(result.text, context))

Templates come from `mcp_templates`, else `bundled_template(name)`; the limits a template runs
under are the constants in `worker.reports.limits`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.reports.context import DONE_STATUSES, build_context, iso_week_bounds
    from worker.reports.refine import RefineOutcome, close_clients, refine_report, required_facts
    from worker.reports.render import (
        BUNDLED_TEMPLATE_NAMES,
        RenderResult,
        bundled_template,
        compile_template,
        render_template,
    )

# Where each name lives, loaded on first use: a process that only reads stored reports (the
# tools worker delivers none, but imports `worker.delivery`) does not load Jinja2 for it.
_HOMES = {
    "DONE_STATUSES": "context",
    "build_context": "context",
    "iso_week_bounds": "context",
    "RefineOutcome": "refine",
    "close_clients": "refine",
    "refine_report": "refine",
    "required_facts": "refine",
    "BUNDLED_TEMPLATE_NAMES": "render",
    "RenderResult": "render",
    "bundled_template": "render",
    "compile_template": "render",
    "render_template": "render",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'worker.reports' has no attribute {name!r}")
    return getattr(importlib.import_module(f"worker.reports.{home}"), name)


__all__ = [
    "BUNDLED_TEMPLATE_NAMES",
    "DONE_STATUSES",
    "RefineOutcome",
    "RenderResult",
    "build_context",
    "bundled_template",
    "close_clients",
    "compile_template",
    "iso_week_bounds",
    "refine_report",
    "render_template",
    "required_facts",
]
