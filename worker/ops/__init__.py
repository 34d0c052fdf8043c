"""Operating the worker: what runs beside the work itself.

- `health`: the checks behind `mcp-worker health` (database, broker, workers, services).
- `lifecycle`: worker start-up and shutdown hooks (close sessions, reap stdio children).
- `logs`: logging set-up, the task id in every line, and the redacting filter.
- `retention`: pruning old executions and reports.

May import any lower layer (`worker.db`, `worker.services`, `worker.execution`, `worker.mcp`).
"""
