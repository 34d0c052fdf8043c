"""Weekly report schedules.

- `cron`: pure time arithmetic (cron slots in a time zone, ISO weeks); no I/O.
- `schedules`: the `mcp_report_schedules` rows and beat's every-minute dispatch.

May import `worker.db` and the task names (`worker.names`); reports import this, not the reverse.
"""
