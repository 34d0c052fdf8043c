"""Throwaway resources for tests that run commands as a user would: a Postgres database and Redis
databases of their own, so what those commands write never meets the session's data."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from testenv import _pg_url

# The virtualenv's scripts (`mcp-worker`, `celery`) first, as an installed image has them.
BIN = str(Path(sys.executable).parent)


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """An empty database (no schema) for the block; yields its URL and drops it afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(_pg_url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def clean_env(home: Path, values: Mapping[str, str]) -> dict[str, str]:
    """An environment with nothing of the test session's settings: PATH (the virtualenv's scripts
    first), HOME, the locale, and `values`."""
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    env.update(values)
    return env
