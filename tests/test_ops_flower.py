"""Flower 2.2 in front of the real worker: auth, the worker list, submitting a task over HTTP (the
non-Python producer's path), the task list without secrets, and Prometheus metrics."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from processes import Proc, SessionWorkers, start_demo_server, start_flower, wait_until
from testenv import LOG_DIR, RUN_ID

from worker.db.engine import session_scope
from worker.execution import audit
from worker.services.store import remove_service, save_service

FLOWER_USER = "ops"
FLOWER_PASSWORD = f"flower-pw-{RUN_ID}"
# The service's key: recognisable, so a leak anywhere in Flower's answers is found by a substring.
SERVICE_KEY = f"sk-live-FLOWERTEST-{uuid.uuid4().hex}"
START_TIMEOUT_S = 60.0
# Events reach Flower, and rows reach Postgres, within seconds; the bound is for a loaded machine.
WAIT_S = 60.0
HTTP_TIMEOUT = httpx2.Timeout(10.0)


@pytest.fixture(scope="module")
def flower(worker_proc: Proc) -> Iterator[str]:
    """Flower on a free loopback port with basic auth (from the environment, as in compose)."""
    proc, base = start_flower(LOG_DIR, os.environ, f"{FLOWER_USER}:{FLOWER_PASSWORD}")
    try:
        yield base
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def service() -> Iterator[dict[str, str]]:
    """A demo server that requires SERVICE_KEY, and a user's service row pointing at it."""
    proc, url = start_demo_server("streamable-http", LOG_DIR, token=SERVICE_KEY)
    user = f"flower-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        save_service(
            session,
            {"user_id": user, "desc": "pm", "interaction_mode": "http", "url": url, "api_key": SERVICE_KEY},
        )
    yield {"user": user, "desc": "pm"}
    proc.stop()
    with session_scope() as session:
        remove_service(session, user, "pm")


@pytest.fixture
def client(flower: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=flower, auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=HTTP_TIMEOUT) as c:
        yield c


def submit(client: httpx2.Client, kwargs: dict[str, Any], **options: Any) -> str:
    response = client.post("/api/task/async-apply/mcp.execute_tool", json={"kwargs": kwargs, **options})
    assert response.status_code == 200, response.text
    task_id = response.json()["task-id"]
    assert isinstance(task_id, str) and task_id
    return task_id


def final_row(task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with session_scope() as session:
            row = audit.get(session, task_id)
            if row is not None and row.status in ("success", "error"):
                return audit.as_dict(row)
        return None

    return wait_until(done, WAIT_S, f"the execution row of {task_id}", interval=0.1)


def flower_task(client: httpx2.Client, task_id: str, state: str) -> tuple[dict[str, Any], str]:
    """Poll /api/tasks until it lists `task_id` in `state`; returns the task and the whole body."""

    def listed() -> tuple[dict[str, Any], str] | None:
        response = client.get("/api/tasks", params={"limit": 100})
        assert response.status_code == 200, response.text
        task = response.json().get(task_id)
        return (task, response.text) if task and task.get("state") == state else None

    return wait_until(listed, WAIT_S, f"flower to list {task_id} as {state}", interval=0.2)


def test_api_and_ui_require_credentials(flower: str) -> None:
    with httpx2.Client(base_url=flower, timeout=HTTP_TIMEOUT) as anonymous:
        assert anonymous.get("/api/workers").status_code == 401
        assert anonymous.get("/api/tasks").status_code == 401
        assert anonymous.post("/api/task/async-apply/mcp.execute_tool", json={}).status_code == 401
        assert anonymous.get("/api/workers", auth=(FLOWER_USER, "wrong")).status_code == 401
        assert anonymous.get("/tasks").status_code == 401


def test_workers_lists_the_running_workers(client: httpx2.Client, worker_proc: SessionWorkers) -> None:
    def listed() -> dict[str, Any] | None:
        response = client.get("/api/workers", params={"refresh": 1})
        assert response.status_code == 200, response.text
        workers = response.json()
        return workers if set(worker_proc.names) <= set(workers) else None

    workers = wait_until(listed, WAIT_S, f"flower to list {worker_proc.names}", interval=0.5)

    def queues_of(name: str) -> set[str]:
        return {q["name"] for q in workers[name].get("active_queues", [])}

    assert queues_of(worker_proc.tools.name) == {"mcp.tools"}
    assert queues_of(worker_proc.reports.name) == {"mcp.reports", "mcp.schedule"}


def test_a_task_submitted_over_http_runs_and_shows_no_secret(
    client: httpx2.Client, service: dict[str, str]
) -> None:
    kwargs = {"user_id": service["user"], "service": service["desc"], "tool": "whoami", "arguments": {}}
    task_id = submit(client, kwargs)

    row = final_row(task_id)
    assert row["status"] == "success", row["error_message"]
    assert row["user_id"] == service["user"] and row["tool"] == "whoami"
    assert row["result"]["key_sha256"]  # the server saw the key (only its digest comes back)

    def result() -> dict[str, Any] | None:
        body = client.get(f"/api/task/result/{task_id}").json()
        return body if body["state"] == "SUCCESS" else None

    answer = wait_until(result, WAIT_S, f"the result of {task_id}", interval=0.2)
    assert answer["result"]["execution_id"] == row["id"]
    assert answer["result"]["status"] == "success"

    task, body = flower_task(client, task_id, "SUCCESS")
    assert task["name"] == "mcp.execute_tool"
    assert service["user"] in task["kwargs"]
    info = client.get(f"/api/task/info/{task_id}").text
    for text in (body, info, str(answer)):
        assert SERVICE_KEY not in text


def test_a_failing_task_shows_its_error_but_no_secret(client: httpx2.Client, service: dict[str, str]) -> None:
    kwargs = {"user_id": service["user"], "service": service["desc"], "tool": "no_such_tool", "arguments": {}}
    task_id = submit(client, kwargs)

    row = final_row(task_id)
    assert row["status"] == "error"
    assert "UnknownTool" in row["error_message"] or "no_such_tool" in row["error_message"]

    task, body = flower_task(client, task_id, "FAILURE")
    assert task["exception"]
    info = client.get(f"/api/task/info/{task_id}").text
    assert SERVICE_KEY not in body and SERVICE_KEY not in info


def test_a_producer_task_id_makes_a_resend_harmless(client: httpx2.Client, service: dict[str, str]) -> None:
    task_id = f"order-42-{uuid.uuid4().hex[:8]}"
    kwargs = {
        "user_id": service["user"],
        "service": service["desc"],
        "tool": "echo",
        "arguments": {"message": "once"},
    }
    assert submit(client, kwargs, task_id=task_id) == task_id
    first = final_row(task_id)
    assert first["status"] == "success" and "once" in json.dumps(first["result"])

    assert submit(client, kwargs, task_id=task_id) == task_id
    flower_task(client, task_id, "SUCCESS")

    # Flower's event record of the task (its result backend reader caches the first result).
    def cached() -> dict[str, Any] | None:
        info = client.get(f"/api/task/info/{task_id}").json()
        return info if "'cached': True" in str(info.get("result")) else None

    wait_until(cached, WAIT_S, f"the re-sent {task_id} to return the stored result", interval=0.2)
    with session_scope() as session:
        row = audit.get(session, task_id)
        assert row is not None and row.id == first["id"] and row.attempts == first["attempts"]


def test_unknown_task_name_is_refused(client: httpx2.Client) -> None:
    response = client.post("/api/task/async-apply/mcp.no_such_task", json={"kwargs": {}})
    assert response.status_code == 404


def test_metrics_answer_without_credentials(flower: str, client: httpx2.Client) -> None:
    # After the tasks above Flower has counted events; the endpoint is open (publish it on loopback).
    with httpx2.Client(base_url=flower, timeout=HTTP_TIMEOUT) as anonymous:
        response = anonymous.get("/metrics")
        health = anonymous.get("/healthcheck")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE flower_events_total counter" in response.text
    assert "flower_worker_online" in response.text
    assert health.status_code == 200 and health.text == "OK"
