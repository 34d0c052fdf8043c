"""A warm worker shutdown closes every pooled session and leaves no stdio server behind: on
prefork, and on the production tools worker (threads, one process per core, supervised)."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from processes import Proc, broker_env, start_tools_worker, start_worker, wait_until
from testenv import LOG_DIR, RUN_ID, extra_redis_url

from worker.client import submit_tool
from worker.db.engine import session_scope
from worker.execution import audit
from worker.services.store import save_service


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie is dead but unreaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _row(task_id: str) -> dict[str, Any] | None:
    with session_scope() as session:
        row = audit.get(session, task_id)
        return audit.as_dict(row) if row is not None and row.status in ("success", "error") else None


@pytest.mark.parametrize("start", [start_worker, start_tools_worker], ids=["prefork", "production-tools"])
def test_no_stdio_server_survives_a_warm_shutdown(start: Callable[..., Proc]) -> None:
    url = extra_redis_url()
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}
    user = f"shut-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "pm",
                "interaction_mode": "stdio",
                "api_key": "k-shutdown",
                "url": f"{sys.executable} -m worker.demo.server --transport stdio",
            },
        )
    worker = start(f"shutdown-{RUN_ID}", LOG_DIR, env)
    try:
        with broker_env(url):
            app = Celery("producer")
            task_ids = [submit_tool(user, "pm", "whoami", {}, app=app).id for _ in range(6)]
            rows = [wait_until(lambda t=t: _row(t), 90, f"row {t}") for t in task_ids]
            app.close()
        assert all(r["status"] == "success" for r in rows), rows
        servers = {r["result"]["pid"] for r in rows}
        assert servers and all(_alive(pid) for pid in servers)
    finally:
        code = worker.stop(signal.SIGTERM)
    assert code == 0, worker.log()[-3000:]
    assert "MainProcess" in worker.log() or "Warm shutdown" in worker.log()
    assert [pid for pid in servers if _alive(pid)] == [], "stdio servers outlived the worker"
