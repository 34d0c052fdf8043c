"""Hot statements as PostgreSQL prepared statements: parsed and planned once per connection.

    CLAIM = Prepared(statement)
    rows = CLAIM.execute(connection, {"b_task_id": ..., ...}).all()

A statement the worker runs on every task spends as much of Postgres's time being parsed and
planned as being executed (the claim: 0.29 ms of server CPU per run, 0.16 ms prepared). psycopg2
has no protocol-level prepare, so this uses SQL `PREPARE` once per pooled connection and `EXECUTE`
after, through SQLAlchemy's `exec_driver_sql`: a connection that dies mid-statement is still seen
and invalidated by SQLAlchemy (the callers' retry depends on it). The names a connection has
prepared live in its pool record's `info`, which SQLAlchemy clears when it replaces the connection.

Only on psycopg2 connections in autocommit mode (the hot path's), and only when
`DB_PREPARED_STATEMENTS` is on: a server that lost the statement (PgBouncer in transaction mode
hands each statement to any server connection) makes `EXECUTE` fail with "does not exist", which
is answered by preparing again and running once more; behind such a pooler, turn the setting off.
Everything else runs the statement as SQLAlchemy Core.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.exc import DBAPIError

from worker.settings import get_settings

# Connection.info key: the names prepared on that DBAPI connection.
INFO_KEY = "mcp_worker_prepared"
# SQLSTATEs: invalid_sql_statement_name ("prepared statement ... does not exist") and
# duplicate_prepared_statement.
MISSING = "26000"
DUPLICATE = "42P05"
_PARAM = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class _Compiled:
    name: str
    prepare_sql: str
    execute_sql: str
    # Per positional parameter: the bind name, its constant (a literal the statement binds), and
    # the type's bind processor (JSON encoding, for example).
    names: tuple[str, ...]
    constants: Mapping[str, Any]
    processors: Mapping[str, Callable[[Any], Any]]

    def args(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name in self.names:
            value = values[name] if name in values else self.constants[name]
            processor = self.processors.get(name)
            out.append(processor(value) if processor is not None else value)
        return tuple(out)


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)


class Prepared:
    """A Core statement with named bind parameters, run prepared where it can be (see module)."""

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._lock = threading.Lock()
        self._compiled: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        key = f"{dialect.name}+{dialect.driver}"
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        with self._lock:
            c = self.statement.compile(dialect=dialect)
            names: list[str] = []

            def positional(match: re.Match[str]) -> str:
                if match.group(1) not in names:
                    names.append(match.group(1))
                return f"${names.index(match.group(1)) + 1}"

            sql = _PARAM.sub(positional, c.string)
            if "%" in sql:
                raise ValueError("a statement with a literal % cannot be prepared as written")
            processors = {}
            for bind_name in names:
                processor = c.binds[bind_name].type.bind_processor(dialect)
                if processor is not None:
                    processors[bind_name] = processor
            name = "mcpw_" + hashlib.sha256(sql.encode()).hexdigest()[:16]
            compiled = _Compiled(
                name=name,
                prepare_sql=f"PREPARE {name} AS {sql}",
                execute_sql=f"EXECUTE {name} ({', '.join(['%s'] * len(names))})"
                if names
                else f"EXECUTE {name}",
                names=tuple(names),
                # Values the statement itself binds (`status = 'running'`); the rest are required.
                constants={n: c.binds[n].effective_value for n in names if not c.binds[n].required},
                processors=processors,
            )
            self._compiled[key] = compiled
            return compiled

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        """Run the statement with `values` (its bind parameters by name) on `connection`."""
        if not self._applies(connection):
            return connection.execute(self.statement, values)
        compiled = self._compile(connection.dialect)
        prepared: set[str] = connection.info.setdefault(INFO_KEY, set())
        if compiled.name not in prepared:
            self._prepare(connection, compiled, prepared)
        args = compiled.args(values)
        try:
            return connection.exec_driver_sql(compiled.execute_sql, args)
        except DBAPIError as exc:
            if _sqlstate(exc) != MISSING:
                raise
        # The server connection no longer has it: prepare again; the failed EXECUTE did nothing.
        prepared.discard(compiled.name)
        self._prepare(connection, compiled, prepared)
        return connection.exec_driver_sql(compiled.execute_sql, args)

    @staticmethod
    def _prepare(connection: Connection, compiled: _Compiled, prepared: set[str]) -> None:
        try:
            connection.exec_driver_sql(compiled.prepare_sql)
        except DBAPIError as exc:
            if _sqlstate(exc) != DUPLICATE:
                raise
        prepared.add(compiled.name)

    @staticmethod
    def _applies(connection: Connection) -> bool:
        if connection.dialect.driver != "psycopg2" or not get_settings().db_prepared_statements:
            return False
        # Only outside a transaction: a failed EXECUTE there would abort the caller's transaction.
        raw = connection.connection.dbapi_connection
        return raw is not None and bool(getattr(raw, "autocommit", False))
