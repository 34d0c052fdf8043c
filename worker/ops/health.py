"""Health checks for operators and container probes: database, broker, workers, services, stuck rows.

Each check returns one `Check` (component, status, a one-line detail) and never raises: a failure
is a `down` row whose detail names the error class and its first line, run through
`worker.redaction.redact` so no credential reaches a terminal or a probe log. Every check runs in
a daemon thread bounded by the caller's timeout, so a library that ignores its own timeout cannot
hang a container health check.

Stuck rows (`mcp_executions` left `running` past the longest hard time limit, e.g. after a worker
was SIGKILLed on the embedded broker) are reported as `warn`, not `down`: they are data to clean up
(`fix_stuck` marks them `error`), and restarting a container would not fix them.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from worker.redaction import redact
from worker.services.config import ServiceConfig
from worker.settings import Settings, get_settings

# A container probe runs every few seconds; each check answers within this unless told otherwise.
DEFAULT_TIMEOUT_S = 3.0
# Slack for a check's thread over its own timeout (imports, the first connection's handshake).
THREAD_MARGIN_S = 1.0
# A detail line is for a table cell; the full story is in the component's own logs.
DETAIL_MAX = 200
STUCK_REASON = (
    "marked error by health: its worker is gone and no redelivery came (lease or retry deadline long past)"
)


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    DOWN = "down"


@dataclass(frozen=True)
class Check:
    """One row of the health table."""

    component: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"component": self.component, "status": self.status.value, "detail": self.detail}


def one_line(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """`ErrorClass: first line of the message`, redacted and cut to a table cell."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = redact(text, [s for s in secrets if s])
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 3] + "..."


def bounded(
    component: str, check: Callable[[], Check], timeout: float, secrets: Sequence[str] = ()
) -> Callable[[], Check]:
    """Start `check` in a daemon thread; the returned callable waits at most `timeout` for it.

    A check still running then is reported `down` and abandoned (daemon: it cannot keep the
    process alive); one that raises is `down` with the error's first line, `secrets` masked.
    """
    box: list[Check] = []

    def run() -> None:
        try:
            box.append(check())
        except Exception as exc:
            box.append(Check(component, Status.DOWN, one_line(exc, secrets)))

    thread = threading.Thread(target=run, name=f"health {component}", daemon=True)
    thread.start()

    def wait() -> Check:
        thread.join(timeout)
        if box:
            return box[0]
        return Check(component, Status.DOWN, f"no answer within {timeout:g}s")

    return wait


# ---------------------------------------------------------------- database


def _health_engine(url: URL, timeout: float) -> sa.Engine:
    """A throwaway engine whose connect and statements are bounded by `timeout`."""
    seconds = max(1, round(timeout))
    if url.get_backend_name() == "sqlite":
        return sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": timeout})
    if url.get_backend_name() == "postgresql":
        return sa.create_engine(
            url,
            poolclass=NullPool,
            connect_args={
                "connect_timeout": seconds,
                "options": f"-c statement_timeout={seconds * 1000}",
            },
        )
    return sa.create_engine(url, poolclass=NullPool)


def _where(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"sqlite {url.database}"
    port = f":{url.port}" if url.port else ""
    return f"{url.get_backend_name()} {url.host or 'localhost'}{port}/{url.database or ''}"


def check_database(settings: Settings, timeout: float) -> Check:
    """Reachable, and every migration the package ships applied."""
    from alembic.runtime.migration import MigrationContext

    from worker.db.schema import head_revision

    url = sa.make_url(settings.database_url)
    secrets = [url.password] if isinstance(url.password, str) else []
    where = _where(url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return Check("database", Status.DOWN, f"{where}: no database file (run mcp-worker db upgrade)")
    engine = _health_engine(url, timeout)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        return Check("database", Status.DOWN, f"{where}: {one_line(exc, secrets)}")
    finally:
        engine.dispose()
    head = head_revision()
    if current != head:
        return Check(
            "database",
            Status.DOWN,
            f"{where}: at revision {current or 'none'}, head is {head} (run mcp-worker db upgrade)",
        )
    return Check("database", Status.OK, f"{where}: revision {current} (head)")


# ---------------------------------------------------------------- broker and workers


def _broker_secrets(settings: Settings) -> list[str]:
    passwords = (urlsplit(raw).password for raw in (settings.broker_url, settings.result_backend))
    return [p for p in passwords if p]


def _config_secrets(settings: Settings) -> list[str]:
    """Every password in the configured URLs: masked in any detail line."""
    password = sa.make_url(settings.database_url).password
    return [*_broker_secrets(settings), *([password] if isinstance(password, str) and password else [])]


def _broker_where(settings: Settings) -> str:
    if settings.broker_is_embedded:
        return f"embedded file broker in {settings.data_dir / 'broker'}"
    url = settings.broker_url
    scheme, _, rest = url.partition("://")
    host = rest.rsplit("@", 1)[-1]  # drop any user:password@
    return f"{scheme}://{host}"


def _connection(timeout: float) -> Any:
    from worker.celery import app

    return app.connection_for_write(
        connect_timeout=timeout,
        transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout, "max_retries": 1},
    )


def check_broker(settings: Settings, timeout: float) -> Check:
    """A connection to the broker (for the embedded file broker: its folders are writable)."""
    where = _broker_where(settings)
    if settings.broker_is_embedded:
        from worker.celery import app

        # The folder the configuration names (loading it creates the folders, as a worker would).
        folder = Path(app.conf.broker_transport_options["data_folder_in"])
        if not folder.is_dir():
            return Check("broker", Status.DOWN, f"{where}: {folder} is missing")
        probe = folder / f".health-{threading.get_ident()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return Check("broker", Status.DOWN, f"{where}: {one_line(exc)}")
        return Check("broker", Status.OK, where)
    conn = _connection(timeout)
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except Exception as exc:
        return Check("broker", Status.DOWN, f"{where}: {one_line(exc, _broker_secrets(settings))}")
    finally:
        conn.release()
    return Check("broker", Status.OK, where)


def check_workers(settings: Settings, timeout: float, names: Sequence[str] = ()) -> Check:
    """At least one worker (or every worker in `names`) answers a ping within `timeout`. A name
    `tools@host` is also answered by the processes `mcp-worker worker` supervises for it,
    `tools-1@host`, `tools-2@host`... (`worker.cli.supervise`)."""
    from worker.celery import app

    conn = _connection(timeout)
    try:
        replies = app.control.ping(timeout=timeout, connection=conn) or []
    except Exception as exc:
        return Check("workers", Status.DOWN, one_line(exc, _broker_secrets(settings)))
    finally:
        conn.release()
    answered = sorted(name for reply in replies for name in reply)
    missing = sorted(name for name in names if not any(_answers_for(name, a) for a in answered))
    if names:
        answered = [a for a in answered if any(_answers_for(name, a) for name in names)]
    if missing:
        return Check("workers", Status.DOWN, f"no answer within {timeout:g}s from {', '.join(missing)}")
    if not answered:
        return Check("workers", Status.DOWN, f"no worker answered a ping within {timeout:g}s")
    shown = ", ".join(answered[:5]) + (f" and {len(answered) - 5} more" if len(answered) > 5 else "")
    return Check("workers", Status.OK, f"{len(answered)} answered: {shown}")


def _answers_for(name: str, node: str) -> bool:
    base, _, host = name.partition("@")
    return node == name or re.fullmatch(rf"{re.escape(base)}-\d+@{re.escape(host)}", node) is not None


# ---------------------------------------------------------------- MCP services


def _with_timeout(config: ServiceConfig, settings: Settings, timeout: float) -> ServiceConfig:
    """`config` with its connect and call timeouts capped at `timeout` (params win in timeouts_for)."""
    from worker.services.config import timeouts_for

    own = timeouts_for(config, settings)
    params = {
        **config.params,
        "connect_timeout": min(own.connect, timeout),
        "call_timeout": min(own.call, timeout),
    }
    return dataclasses.replace(config, params=params)


def service_component(config: ServiceConfig) -> str:
    return redact(f"service {config.user_id}/{config.desc}", config.secrets())


def check_service(config: ServiceConfig, settings: Settings, timeout: float) -> Check:
    """The service's server answers `tools/list`."""
    from worker import mcp

    component = service_component(config)
    try:
        tools = mcp.list_tools(_with_timeout(config, settings, timeout), settings=settings)
    except Exception as exc:
        return Check(component, Status.DOWN, one_line(exc, config.secrets()))
    return Check(component, Status.OK, f"{config.mode}: {len(tools)} tool(s)")


def list_configured_services(settings: Settings) -> list[ServiceConfig]:
    """Every configured service (all users), from the database or the development file."""
    from worker.services.registry import list_services

    if settings.development_mode:
        return list_services(None)
    from worker.db.engine import session_scope

    with session_scope() as session:
        return list_services(session)


# ---------------------------------------------------------------- stuck rows


def stuck_cutoff(settings: Settings, now: datetime) -> datetime:
    """Rows whose lease (or retry deadline) ran out before this have lost their holder for good.

    A live holder renews its lease (`worker.execution.leases`); once a dead one's lease has run
    out, its message comes back within the visibility timeout and one restore sweep, and the
    redelivery claims the row. A row still expired after all that has no message left.
    """
    sweep = settings.unacked_restore_interval * settings.unacked_restore_throttle
    return now - timedelta(seconds=settings.visibility_timeout + sweep + settings.lease_seconds)


def find_stuck(settings: Settings, now: datetime | None = None, fix: bool = False) -> list[dict[str, Any]]:
    """Rows whose holder is gone for good (`audit.stuck`); with `fix`, marked `error` (STUCK_REASON)."""
    from worker.db.engine import session_scope
    from worker.db.models import McpExecution
    from worker.execution import audit

    cutoff = stuck_cutoff(settings, now or datetime.now(UTC))
    with session_scope() as session:
        # The same rows `audit.mark_stuck` takes: the one place that persists the transition.
        rows = session.execute(
            sa.select(McpExecution.id, McpExecution.task_id, McpExecution.attempts)
            .where(audit.stuck(cutoff))
            .order_by(McpExecution.id)
        ).all()
        if fix and rows:
            audit.mark_stuck(session, cutoff, STUCK_REASON)
    return [{"id": r.id, "task_id": r.task_id, "attempts": r.attempts} for r in rows]


def check_stuck(settings: Settings, fix: bool) -> Check:
    stuck = find_stuck(settings, fix=fix)
    if not stuck:
        return Check("stuck executions", Status.OK, "none left by a dead worker or a lost retry")
    ids = ", ".join(str(r["id"]) for r in stuck[:10]) + (" ..." if len(stuck) > 10 else "")
    if fix:
        return Check("stuck executions", Status.WARN, f"marked {len(stuck)} row(s) error: {ids}")
    return Check(
        "stuck executions",
        Status.WARN,
        f"{len(stuck)} row(s) left by a dead worker or a lost retry: {ids} (--fix-stuck marks them error)",
    )


# ---------------------------------------------------------------- all together


def run_checks(
    *,
    services: bool = False,
    fix_stuck: bool = False,
    workers: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    settings: Settings | None = None,
) -> list[Check]:
    """Run every check concurrently, each bounded by `timeout`; returns them in a fixed order."""
    settings = settings or get_settings()
    wait_for = timeout + THREAD_MARGIN_S
    hide = _config_secrets(settings)
    pending = [
        bounded("database", lambda: check_database(settings, timeout), wait_for, hide),
        bounded("broker", lambda: check_broker(settings, timeout), wait_for, hide),
        bounded("workers", lambda: check_workers(settings, timeout, workers), wait_for, hide),
    ]
    checks = [wait() for wait in pending]
    if checks[0].status is Status.OK:
        stuck = bounded("stuck executions", lambda: check_stuck(settings, fix_stuck), wait_for, hide)
        checks.append(stuck())
    if services:
        checks += _check_services(settings, timeout, database_ok=checks[0].status is Status.OK)
    return checks


def _check_services(settings: Settings, timeout: float, *, database_ok: bool) -> list[Check]:
    if not settings.development_mode and not database_ok:
        return [Check("services", Status.DOWN, "not checked: the database is down")]
    box: list[list[ServiceConfig]] = []

    def listing() -> Check:
        box.append(list_configured_services(settings))
        return Check("services", Status.OK, f"{len(box[0])} configured")

    summary = bounded("services", listing, timeout + THREAD_MARGIN_S, _config_secrets(settings))()
    if not box:
        return [summary]
    # Connect + list may each take `timeout`; the session close after it is bounded in the pool.
    per_service = 2 * timeout + THREAD_MARGIN_S
    waits = [
        bounded(service_component(c), functools.partial(check_service, c, settings, timeout), per_service)
        for c in box[0]
    ]
    try:
        return [summary, *(wait() for wait in waits)]
    finally:
        _close_sessions(timeout)


def _close_sessions(timeout: float) -> None:
    """Close the sessions the checks opened and reap any stdio child they started, within `timeout`."""
    from worker import mcp

    closer = threading.Thread(target=mcp.shutdown_runtime, name="health close sessions", daemon=True)
    closer.start()
    closer.join(timeout + THREAD_MARGIN_S)


def healthy(checks: Sequence[Check]) -> bool:
    return all(c.status is not Status.DOWN for c in checks)
