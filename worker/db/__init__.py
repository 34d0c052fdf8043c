"""The database plumbing: everything that knows how rows reach PostgreSQL (or SQLite).

- `engine`: one engine per process (rebuilt after a fork), one session and one transaction per
  unit of work (`session_scope`), and the hot path's autocommit connection with its one retry
  after a lost connection (`autocommit`).
- `prepared`: server-side prepared statements for the two statements every task runs.
- `models`: the ORM tables (created by Alembic, `migrations/`).
- `schema`: migrating a database to head and reading its revision.

Imports `worker.settings` and `worker.errors` only; the rows' logic lives with its concern
(`worker.execution.audit`, `worker.services.store`, `worker.reports.storage`, ...).
"""
