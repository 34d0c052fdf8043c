"""OAuth across real worker processes: one token for many concurrent calls, and a revoked client
as a clear `AuthenticationFailed` in the execution row."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from oauth_helpers import OAuthWorld, oauth_record
from processes import Proc, start_worker, wait_until
from testenv import LOG_DIR, RUN_ID, extra_redis_url

from worker.client import submit_tool
from worker.db.engine import session_scope
from worker.execution import audit
from worker.services.store import save_service

CALLS = 50
WORKERS = 2
THREADS_PER_WORKER = 25
TIMEOUT_S = 120.0
# The authorization server takes this long to answer: long enough that both workers need a token
# while the other is still fetching one (without the row lock each would fetch its own).
SLOW_TOKEN_S = 1.0


@dataclass
class Workers:
    app: Celery
    procs: list[Proc]


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    """Two tools workers (threads pool, 25 threads each) on a private Redis database."""
    url = extra_redis_url()
    # Celery reads these variables before its configuration: the producer app must see them.
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", url)
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url}
    app = Celery("oauth-producer", broker=url, backend=url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    procs: list[Proc] = []
    with ExitStack() as stack:
        for n in range(WORKERS):
            proc = start_worker(
                f"oauth-{n}-{RUN_ID}",
                LOG_DIR,
                env,
                queues="mcp.tools",
                pool="threads",
                concurrency=THREADS_PER_WORKER,
            )
            stack.callback(proc.stop)
            procs.append(proc)
        yield Workers(app, procs)
        app.close()


def final_rows(task_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        with session_scope() as session:
            for task_id in task_ids:
                row = audit.get(session, task_id)
                if row is not None and row.status in ("success", "error"):
                    found[task_id] = audit.as_dict(row)
        return len(found) == len(task_ids)

    wait_until(done, TIMEOUT_S, f"{len(task_ids)} final rows", interval=0.25)
    return found


def test_fifty_concurrent_calls_on_two_workers_fetch_one_token(
    world: OAuthWorld, two_workers: Workers
) -> None:
    user = f"m2m-{uuid.uuid4().hex[:6]}"
    client_id = world.add_client(secret="one-token-for-all", delay_s=SLOW_TOKEN_S)
    with session_scope() as session:
        save_service(session, oauth_record(world, client_id, user=user, client_secret="one-token-for-all"))

    app = two_workers.app
    ids = [submit_tool(user, "oauth", "whoami", {}, app=app).id for _ in range(CALLS)]
    rows = final_rows(ids)

    assert {r["status"] for r in rows.values()} == {"success"}, [r["error_message"] for r in rows.values()]
    assert all(r["result"] == {"client_id": client_id} for r in rows.values())
    assert world.token_requests(client_id) == 1
    # Both processes ran calls (prefetch 1: neither can hold more than its 25 threads' worth).
    for proc in two_workers.procs:
        assert any(task_id in proc.log() for task_id in ids), f"{proc.name} ran none of the calls"

    # The server forgets the token: every session of both processes gets a 401, and the one new
    # token one process fetches (holding the credential's row lock) serves the other's retries too.
    world.admin("forget_tokens", {"client_id": client_id})
    again = final_rows([submit_tool(user, "oauth", "whoami", {}, app=app).id for _ in range(CALLS)])
    assert {r["status"] for r in again.values()} == {"success"}, [r["error_message"] for r in again.values()]
    assert world.token_requests(client_id) == 2

    # The client is revoked: the next call ends as a clear AuthenticationFailed, not retried.
    world.admin("revoke", {"client_id": client_id})
    refused = final_rows([submit_tool(user, "oauth", "whoami", {}, app=app).id])
    (row,) = refused.values()
    assert row["status"] == "error"
    assert row["error_message"].startswith("AuthenticationFailed: "), row
    assert "invalid_client" in row["error_message"] and client_id in row["error_message"]
    assert row["attempts"] == 1
    assert "one-token-for-all" not in repr(row)
