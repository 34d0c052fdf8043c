"""Claiming a task's audit row and resolving the service it calls, as one step.

`claim` takes the row's lease for this attempt (`worker.execution.audit.begin`) and, when it got
it, resolves the user's service. On PostgreSQL with services in the database both happen in one
statement: the claim's upsert as a CTE, outer-joined with the service lookup
(`worker.services.store.LOOKUP`, whose bind parameters are the claim's). A service that cannot be
resolved is not an exception here: it comes back as `Claim.service_error`, so the caller records
it on the row it has just claimed like any other failure of the call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from worker.db.prepared import Prepared
from worker.errors import InvalidService, WorkerError
from worker.execution import audit
from worker.services import registry, store
from worker.services.config import ServiceConfig
from worker.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """What claiming found: the row's state and, when this attempt claimed it, the service or the
    reason it could not be resolved (exactly one of the two)."""

    row: audit.Begun
    service: ServiceConfig | None = None
    service_error: WorkerError | None = None

    @property
    def claimed(self) -> bool:
        return self.row.claimed

    def config(self) -> ServiceConfig:
        """The claimed row's service.

        Raises:
            WorkerError: why it could not be resolved.
        """
        if self.service_error is not None:
            raise self.service_error
        assert self.service is not None  # a claim carries the service or the reason there is none
        return self.service


def _claim_and_lookup() -> Prepared:
    """No row: not claimed. Otherwise (id, attempts, server_task_id, *lookup columns) per service row found, or
    one row with the lookup columns NULL when there is none. Prepared: it runs on every task."""
    claimed = audit.claim_statement("postgresql").cte("claim")
    found = store.LOOKUP.subquery("found")
    return Prepared(
        sa.select(claimed.c.id, claimed.c.attempts, claimed.c.server_task_id, *found.c).select_from(
            claimed.outerjoin(found, sa.true())
        )
    )


_CLAIM_AND_LOOKUP = _claim_and_lookup()


def _resolved(row: audit.Begun, values: dict[str, Any], look: Any) -> Claim:
    try:
        return Claim(row, service=look())
    except DBAPIError:
        logger.warning("execution %s could not reach the database; the task will retry", row.id)
        raise
    except WorkerError as exc:
        return Claim(row, service_error=exc)
    except Exception as exc:
        # A row that cannot even be read as a service (a bug, a hand-edited column): a permanent
        # failure of this call, recorded, never lost.
        logger.exception("service %r of %r could not be read", values["b_service"], values["b_user_id"])
        return Claim(
            row, service_error=InvalidService(f"service could not be read: {type(exc).__name__}: {exc}")
        )


def claim(connection: Connection, values: dict[str, Any], settings: Settings) -> Claim:
    """Claim the row for the attempt `values` describes (`audit.claim_values`) and resolve its
    service. Safe to repeat with the same values (the same owner reclaims its own lease).

    Raises:
        DBAPIError: the database could not be reached; nothing was claimed or nothing recorded.
    """
    user, desc = values["b_user_id"], values["b_service"]
    if settings.development_mode or connection.dialect.name != "postgresql":
        row = audit.begin(connection, values)
        if not row.claimed:
            return Claim(row)
        return _resolved(row, values, lambda: registry.resolve(user, desc, connection))
    rows: list[Any] = list(_CLAIM_AND_LOOKUP.execute(connection, values))
    if not rows:
        return Claim(audit.unclaimed(connection, values))
    row = audit.Begun(id=rows[0][0], attempts=rows[0][1], already_succeeded=False, server_task_id=rows[0][2])
    found = [tuple(r[3:]) for r in rows if r[3] is not None]
    return _resolved(row, values, lambda: store.from_rows(found, user, desc))
