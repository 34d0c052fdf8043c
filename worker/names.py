"""The producer contract's names: tasks and their queues (DESIGN.md, "Tasks").

Stable: apps written in any language send these names. Everything that names a task or a queue
(the tasks, the producer API, the routes and beat schedule in `celeryconfig`, the scheduler)
imports them from here. Nothing else lives here, so producers can import it for nothing.
"""

from __future__ import annotations

TOOLS_QUEUE = "mcp.tools"
REPORTS_QUEUE = "mcp.reports"
SCHEDULE_QUEUE = "mcp.schedule"

EXECUTE_TOOL = "mcp.execute_tool"
GENERATE_REPORT = "mcp.generate_report"
DISPATCH_DUE_REPORTS = "mcp.dispatch_due_reports"
PRUNE_OLD_RECORDS = "mcp.prune_old_records"
REAP_STUCK_EXECUTIONS = "mcp.reap_stuck_executions"
DELIVER_REPORT = "mcp.deliver_report"

# Which queue each task runs on; a task not listed here runs on SCHEDULE_QUEUE.
QUEUE_OF = {EXECUTE_TOOL: TOOLS_QUEUE, GENERATE_REPORT: REPORTS_QUEUE, DELIVER_REPORT: REPORTS_QUEUE}
