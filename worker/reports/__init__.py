"""Weekly reports: build the template context, render in a hardened sandbox, refine with OpenAI.

    context = build_context(data, "2026-W47")                  # the data tool's output + counts
    result = render_template(name, source, context)            # TemplateError on any failure
    outcome = refine_report(result.text, settings=settings,
                            facts=required_facts(result.text, context))

Templates come from `mcp_templates`, else `bundled_template(name)`; the limits a template runs
under are the constants in `worker.reports.limits`.
"""

from worker.reports.context import DONE_STATUSES, build_context, iso_week_bounds
from worker.reports.refine import RefineOutcome, close_clients, refine_report, required_facts
from worker.reports.render import (
    BUNDLED_TEMPLATE_NAMES,
    RenderResult,
    bundled_template,
    compile_template,
    render_template,
)

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
