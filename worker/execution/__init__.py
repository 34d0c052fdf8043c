"""One audited tool call: the logic behind `mcp.execute_tool`, testable without Celery.

- `call`: `run_tool_call`, claim, call the tool, record the outcome.
- `claim`: claiming the task's row and resolving its service as one step (`Claim`).
- `audit`: the `mcp_executions` row's lifecycle (`Status`), every transition persisted there.

May import `worker.db`, `worker.services` and the MCP runtime (`worker.mcp`); nothing here
imports Celery beyond its soft-time-limit exception.
"""
