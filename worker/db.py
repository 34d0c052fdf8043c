"""One SQLAlchemy engine per process, and one session (one transaction) per unit of work.

The engine is created lazily and keyed on `os.getpid()`: a process forked from a parent that had
an engine (Celery's prefork pool) builds its own instead of sharing the parent's sockets, and
`worker_process_init` is not needed (it does not fire under the threads pool).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from worker.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "engine": None, "sessionmaker": None}

# SQLite waits this long for another writer (worker processes, the CLI) before giving up.
SQLITE_BUSY_TIMEOUT_S = 30


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


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
    return sa.create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=settings.db_pool_pre_ping,
    )


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
