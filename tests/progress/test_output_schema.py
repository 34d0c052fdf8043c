"""Structured output: a result is checked against the tool's `outputSchema`; a mismatch keeps the
result and is recorded on the row (`output_valid`, `output_error`), the row says `success`."""

from __future__ import annotations

import uuid
from typing import Any

from testenv import DEMO_HTTP_TOKEN

from worker.db.engine import session_scope
from worker.execution import audit
from worker.execution.call import run_tool_call
from worker.services.store import save_service


def _service(user: str, url: str) -> None:
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "pm",
                "interaction_mode": "streamable_http",
                "url": url,
                "api_key": DEMO_HTTP_TOKEN,
            },
        )


def _call(user: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    task_id = f"schema-{uuid.uuid4().hex}"
    run_tool_call(
        task_id=task_id, user_id=user, service="pm", tool=tool, arguments=arguments, final_attempt=True
    )
    with session_scope() as session:
        row = audit.get(session, task_id)
        assert row is not None
        return audit.as_dict(row)


def test_a_result_that_violates_its_output_schema_is_kept_and_the_mismatch_recorded(demo_http: str) -> None:
    user = f"schema-{uuid.uuid4().hex[:6]}"
    _service(user, demo_http)

    row = _call(user, "mismatched_output", {"count": 3})

    assert row["status"] == "success"
    assert row["result"] == {"count": "3"}
    assert row["output_valid"] is False
    assert "'3' is not of type 'integer'" in row["output_error"]
    assert "$.count" in row["output_error"]


def test_a_matching_result_and_a_tool_without_a_schema(demo_http: str) -> None:
    user = f"schema-{uuid.uuid4().hex[:6]}"
    _service(user, demo_http)

    matching = _call(user, "fetch_weekly_report", {"project_id": 1, "week": "2026-W47"})
    unstructured = _call(user, "echo", {"message": "hi"})

    assert (matching["status"], matching["output_valid"], matching["output_error"]) == ("success", True, None)
    assert (unstructured["status"], unstructured["output_valid"], unstructured["result"]) == (
        "success",
        None,
        ["hi"],
    )
