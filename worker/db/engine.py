"""One SQLAlchemy engine per process, and one session (one transaction) per unit of work.

The engine is created lazily and keyed on `os.getpid()`: a process forked from a parent that had
an engine (Celery's prefork pool) builds its own instead of sharing the parent's sockets, and
`worker_process_init` is not needed (it does not fire under the threads pool).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from worker.settings import Settings, get_settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "engine": None, "sessionmaker": None}

# SQLite waits this long for another writer (worker processes, the CLI) before giving up.
SQLITE_BUSY_TIMEOUT_S = 30


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Check a pooled connection before handing it out, unless it was in use less than `idle_s`
    seconds ago (as HikariCP's alive-bypass window does): a connection that sat idle may have
    been cut (a database restart, a proxy's idle timeout), one in constant use is proven by its
    last statement. SQLAlchemy's `pool_pre_ping` pings on every checkout, which on the task hot
    path was two extra round trips per call. A connection that dies inside the window fails its
    statement as a disconnect, which invalidates the pool; the hot path then retries once on a
    new connection (`autocommit` below), and anything else retries as a task.
    """

    def _stamp(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    # A new connection has just proved itself; one returned to the pool was just used.
    sa.event.listen(engine, "connect", _stamp)
    sa.event.listen(engine, "checkin", _stamp)

    @sa.event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is not None and time.monotonic() - checked_in_at < idle_s:
            return
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                # The database probably restarted: the pool discards this connection and every
                # other one opened before now, and hands out a fresh one instead.
                raise sa.exc.InvalidatePoolError(f"pooled connection is gone: {exc}") from exc
            raise


def create_engine_for(settings: Settings) -> Engine:
    """Build an engine for `settings.database_url` with the seed's pool options."""
    url = sa.make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if settings.db_nullpool:
        return sa.create_engine(url, poolclass=NullPool, pool_pre_ping=settings.db_pool_pre_ping)
    engine = sa.create_engine(url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    if settings.db_pool_pre_ping:
        _ping_when_idle(engine, settings.db_pool_ping_idle_s)
    return engine


def get_engine() -> Engine:
    """This process's engine, created on first use after any fork."""
    pid = os.getpid()
    engine = _state["engine"]
    if engine is not None and _state["pid"] == pid:
        return engine
    with _lock:
        if _state["engine"] is not None and _state["pid"] != pid:
            # Inherited from the parent: drop the pooled connections without closing the
            # parent's sockets (close=False), then build our own.
            _state["engine"].dispose(close=False)
            _state["engine"] = None
        if _state["engine"] is None:
            engine = create_engine_for(get_settings())
            _state.update(pid=pid, engine=engine, sessionmaker=sessionmaker(engine, expire_on_commit=False))
        return _state["engine"]


def dispose_engine() -> None:
    """Close this process's engine (worker shutdown, tests switching databases)."""
    with _lock:
        engine = _state["engine"]
        if engine is not None and _state["pid"] == os.getpid():
            engine.dispose()
        _state.update(pid=None, engine=None, sessionmaker=None)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One session and one transaction: commit on success, roll back on any exception."""
    get_engine()
    session: Session = _state["sessionmaker"]()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def autocommit_connection() -> Iterator[Connection]:
    """A pooled connection in autocommit mode, for the hot path's steps: each of them is one
    write (plus reads that need no snapshot), so a BEGIN and a COMMIT would only add two round
    trips. Nothing is left open: each statement commits as it runs."""
    with get_engine().connect() as connection:
        raw = connection.connection.dbapi_connection
        if connection.dialect.driver != "psycopg2" or raw is None:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection
            return
        # psycopg2's own switch costs nothing; `isolation_level="AUTOCOMMIT"` would also reset the
        # isolation level on release, which psycopg2 turns into two more round trips per checkout.
        raw.autocommit = True
        try:
            yield connection
        finally:
            if not raw.closed:
                raw.autocommit = False


def autocommit(work: Callable[[Connection], T]) -> T:
    """`work(connection)` on an `autocommit_connection`, run again once on a fresh connection when
    the first one turns out to be dead (a database restart inside the pool's ping window, see
    `worker.db`). Only for work that is safe to repeat: the claim (same owner) and the success write.
    """
    try:
        with autocommit_connection() as connection:
            return work(connection)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        logger.warning(
            "the database connection was lost (%s); trying once more on a new one", type(exc.orig).__name__
        )
    with autocommit_connection() as connection:
        return work(connection)
