"""Schema management: run the Alembic migrations that ship inside the package."""

from __future__ import annotations

import logging
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from worker.db.engine import get_engine
from worker.settings import get_settings

logger = logging.getLogger(__name__)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged migrations and `url` (default: the settings' database)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("worker._migrations")))
    config.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database to `revision` (default: the newest)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    """Migrate the database down to `revision` (default: nothing left)."""
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """The newest revision the package ships."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision() -> str | None:
    """The revision the configured database is at (None for an empty database)."""
    with get_engine().connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_at_head() -> bool:
    """True when the configured database has every migration applied."""
    return current_revision() == head_revision()


def ensure_schema() -> None:
    """Migrate the embedded SQLite database on first use; leave real databases to the operator."""
    settings = get_settings()
    if settings.database_is_embedded and not is_at_head():
        logger.info("migrating the embedded database at %s", settings.database_url)
        upgrade()
