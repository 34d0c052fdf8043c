"""Audit rows over time: reading them (`mcp-worker executions`) and pruning them (`worker.ops.retention`)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from worker.cli import main
from worker.cli.executions import parse_since
from worker.db.engine import session_scope
from worker.db.models import McpExecution, McpReport
from worker.errors import InvalidArguments
from worker.ops.retention import prune

pytestmark = pytest.mark.usefixtures("clean_db")

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def add_execution(created: datetime, user: str = "alice", status: str = "success") -> tuple[int, str]:
    task_id = f"task-{uuid.uuid4()}"
    with session_scope() as session:
        row = McpExecution(
            task_id=task_id,
            user_id=user,
            tool_desc="pm",
            tool_name="echo",
            params={"message": "hi", "api_key": "***"},
            status=status,
            result={"text": "hi"} if status == "success" else None,
            error_message="ServerTimeout: too slow" if status == "error" else None,
            attempts=1,
            execution_time_ms=12,
            created_at=created,
        )
        session.add(row)
        session.flush()
        return row.id, task_id


def add_report(created: datetime, execution_id: int | None) -> int:
    with session_scope() as session:
        row = McpReport(
            task_id=f"report-{uuid.uuid4()}",
            user_id="alice",
            service="pm",
            template="weekly_report.j2",
            period="2026-W01",
            content="report",
            raw_content="report",
            execution_id=execution_id,
            created_at=created,
        )
        session.add(row)
        session.flush()
        return row.id


def count(model: type[McpExecution] | type[McpReport]) -> int:
    with session_scope() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


# ---------------------------------------------------------------- retention


def test_prune_deletes_old_rows_in_batches_and_keeps_new_ones() -> None:
    old = NOW - timedelta(days=40)
    old_ids = [add_execution(old - timedelta(minutes=i))[0] for i in range(7)]
    new_id, _ = add_execution(NOW - timedelta(days=2))
    for execution_id in old_ids[:5]:
        add_report(old, execution_id)
    # A recent report whose execution is old: the report stays, its link becomes NULL.
    kept_report = add_report(NOW - timedelta(days=1), old_ids[5])

    counts = prune(now=NOW, days=30, batch_size=2)

    assert counts == {"mcp_reports": 5, "mcp_executions": 7}
    assert count(McpExecution) == 1
    with session_scope() as session:
        assert session.get(McpExecution, new_id) is not None
        report = session.get(McpReport, kept_report)
        assert report is not None and report.execution_id is None
    assert prune(now=NOW, days=30, batch_size=2) == {"mcp_reports": 0, "mcp_executions": 0}


def test_prune_batch_boundary_deletes_everything_old() -> None:
    for i in range(4):
        add_execution(NOW - timedelta(days=100, minutes=i))
    assert prune(now=NOW, days=90, batch_size=2) == {"mcp_reports": 0, "mcp_executions": 4}
    assert count(McpExecution) == 0


def test_zero_days_keeps_everything() -> None:
    add_execution(NOW - timedelta(days=5000))
    assert prune(now=NOW, days=0) == {"mcp_reports": 0, "mcp_executions": 0}
    assert count(McpExecution) == 1


def test_default_days_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.settings import get_settings, reset_settings

    add_execution(NOW - timedelta(days=91))
    add_execution(NOW - timedelta(days=89))
    assert get_settings().retention_days == 90
    assert prune(now=NOW) == {"mcp_reports": 0, "mcp_executions": 1}

    monkeypatch.setenv("MCP_RETENTION_DAYS", "0")
    reset_settings()
    try:
        add_execution(NOW - timedelta(days=400))
        assert prune(now=NOW) == {"mcp_reports": 0, "mcp_executions": 0}
    finally:
        monkeypatch.undo()
        reset_settings()


def test_prune_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        prune(now=NOW, days=-1)
    with pytest.raises(ValueError):
        prune(now=NOW, days=1, batch_size=0)


# ---------------------------------------------------------------- mcp-worker executions


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_list_filters_by_user_status_and_since(capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    old_id, _ = add_execution(now - timedelta(days=3), user="alice")
    recent_id, _ = add_execution(now - timedelta(hours=1), user="alice", status="error")
    bob_id, _ = add_execution(now - timedelta(minutes=5), user="bob")

    everything = cli_json(capsys, "executions", "list", "--json")
    assert [r["id"] for r in everything] == [bob_id, recent_id, old_id]

    alice = cli_json(capsys, "executions", "list", "--user", "alice", "--json")
    assert [r["id"] for r in alice] == [recent_id, old_id]

    errors = cli_json(capsys, "executions", "list", "--status", "error", "--json")
    assert [r["id"] for r in errors] == [recent_id]
    assert errors[0]["error_message"] == "ServerTimeout: too slow"

    last_two_hours = cli_json(capsys, "executions", "list", "--since", "2h", "--json")
    assert [r["id"] for r in last_two_hours] == [bob_id, recent_id]
    since_date = (now - timedelta(days=1)).date().isoformat()
    by_date = cli_json(capsys, "executions", "list", "--since", since_date, "--json")
    assert old_id not in [r["id"] for r in by_date]

    limited = cli_json(capsys, "executions", "list", "--limit", "1", "--json")
    assert [r["id"] for r in limited] == [bob_id]


def test_list_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    _, task_id = add_execution(datetime.now(UTC), user="carol")
    capsys.readouterr()
    assert main(["executions", "list"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()
    assert header.split()[:6] == ["id", "task_id", "user", "service", "tool", "status"]
    assert task_id in row and "carol" in row and "success" in row


def test_show_by_row_id_or_task_id(capsys: pytest.CaptureFixture[str]) -> None:
    row_id, task_id = add_execution(datetime.now(UTC))
    by_id = cli_json(capsys, "executions", "show", str(row_id))
    by_task = cli_json(capsys, "executions", "show", task_id)
    assert by_id == by_task
    assert by_id["task_id"] == task_id and by_id["result"] == {"text": "hi"}
    assert by_id["params"]["api_key"] == "***"


def test_show_unknown_and_bad_options_fail_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["executions", "show", "999999"]) == 1
    assert main(["executions", "show", "99999999999999999999"]) == 1
    assert main(["executions", "list", "--since", "yesterday"]) == 1
    assert main(["executions", "list", "--limit", "0"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: no execution with id or task id '999999'"
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)


def test_parse_since_forms() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("3d", now) == now - timedelta(days=3)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("1w", now) == now - timedelta(weeks=1)
    assert parse_since("2026-02-01") == datetime(2026, 2, 1, tzinfo=UTC)
    assert parse_since("2026-02-01T08:30:00+02:00") == datetime(2026, 2, 1, 6, 30, tzinfo=UTC)
    with pytest.raises(InvalidArguments):
        parse_since("soon")


def test_prune_command_deletes_what_the_beat_task_would(capsys: pytest.CaptureFixture[str]) -> None:
    add_execution(datetime.now(UTC) - timedelta(days=10))
    add_execution(datetime.now(UTC))
    assert cli_json(capsys, "executions", "prune", "--days", "30") == {"mcp_reports": 0, "mcp_executions": 0}
    assert cli_json(capsys, "executions", "prune", "--days", "7") == {"mcp_reports": 0, "mcp_executions": 1}
    assert count(McpExecution) == 1
    assert main(["executions", "prune", "--days", "-1"]) == 1
