"""Which MCP server a user's service name means: `resolve(user_id, desc)`.

The user's own record, else the `global` one, else `ServiceNotFound`; a user never sees another
user's service. Records come from `mcp_services` (`worker.services.store`), or from the JSON file
(`worker.services.devfile`) when `DEVELOPMENT_MODE=true`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from worker.db.engine import session_scope
from worker.db.models import McpService
from worker.errors import ConfigurationError
from worker.services.config import GLOBAL_USER, ServiceConfig, pick_for_user, validate_record
from worker.services.devfile import load_config_file
from worker.services.store import LOOKUP, from_rows, row_to_record
from worker.settings import get_settings


def resolve(user_id: str, desc: str, session: Session | Connection | None = None) -> ServiceConfig:
    """The service `desc` as `user_id` sees it: their own row, else the global one.

    One round trip; a row this process has already validated and decrypted, unchanged since, is
    not validated or decrypted again (see `_validated`).

    Raises:
        ServiceNotFound: neither exists.
        InvalidService: the stored row cannot be used as written.
        ConfigurationError: development mode and the services file is bad.
    """
    settings = get_settings()
    if settings.development_mode:
        if settings.config_file is None:
            raise ConfigurationError("DEVELOPMENT_MODE=true needs MCP_CONFIG_FILE")
        return pick_for_user(load_config_file(settings.config_file, settings), user_id, desc)
    if session is None:
        with session_scope() as own:
            return resolve(user_id, desc, own)
    return from_rows(session.execute(LOOKUP, {"b_user_id": user_id, "b_service": desc}).all(), user_id, desc)


def list_services(session: Session | None, user_id: str | None = None) -> list[ServiceConfig]:
    """Services visible to `user_id` (their own and the global ones), or all of them."""
    settings = get_settings()
    if settings.development_mode:
        if settings.config_file is None:
            raise ConfigurationError("DEVELOPMENT_MODE=true needs MCP_CONFIG_FILE")
        configs = load_config_file(settings.config_file, settings)
    else:
        assert session is not None
        query = sa.select(McpService).order_by(McpService.user_id, McpService.desc)
        if user_id is not None:
            query = query.where(McpService.user_id.in_([user_id, GLOBAL_USER]))
        configs = [validate_record(row_to_record(r), settings) for r in session.scalars(query)]
    if user_id is None:
        return configs
    own = {c.desc for c in configs if c.user_id == user_id}
    return [c for c in configs if c.user_id == user_id or (c.user_id == GLOBAL_USER and c.desc not in own)]
