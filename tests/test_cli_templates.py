"""`mcp-worker templates ...` and `reports ...` as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "worker.cli"]
DATA = {
    "project": {"id": 3, "name": "Apollo"},
    "week": "2026-W47",
    "work_packages": [
        {"id": 1, "subject": "A", "status": "Completed", "assignee": "Ann", "due_date": "2026-11-16"},
        {"id": 2, "subject": "B", "status": "Blocked", "assignee": None, "due_date": "2026-11-10"},
        {"id": 3, "subject": "C", "status": "Blocked", "assignee": "Cy", "due_date": None},
    ],
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=os.environ)


@pytest.mark.usefixtures("clean_db")
def test_set_validates_preview_renders_and_remove_falls_back_to_bundled(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps(DATA))
    good = tmp_path / "good.j2"
    good.write_text(
        "{{ project.name }}: {{ total }} total, Blocked {{ totals_by_status['Blocked'] }}, {{ nobody }}"
    )
    bad = tmp_path / "bad.j2"
    bad.write_text("line one\n{% if %}")

    refused = run("templates", "set", "custom.j2", str(bad))
    assert refused.returncode == 1 and "template 'custom.j2' line 2" in refused.stderr
    assert "custom.j2" not in run("templates", "list").stdout

    assert run("templates", "set", "custom.j2", str(good), "--description", "mine").returncode == 0
    listed = run("templates", "list").stdout
    assert "custom.j2" in listed and "database" in listed and "weekly_report.j2" in listed
    assert run("templates", "show", "custom.j2").stdout.strip() == good.read_text()

    preview = run("templates", "preview", "custom.j2", "--data", str(data))
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.strip() == "Apollo: 3 total, Blocked 2,"
    assert "undefined names: nobody" in preview.stderr

    bundled = run("templates", "preview", "weekly_report.j2", "--data", str(data))
    assert "- Blocked: 2" in bundled.stdout and "## Unassigned (1)" in bundled.stdout

    assert run("templates", "remove", "custom.j2").returncode == 0
    missing = run("templates", "show", "custom.j2")
    assert missing.returncode == 1 and "no template 'custom.j2'" in missing.stderr


def test_reports_show_of_an_unknown_id_is_a_clear_error() -> None:
    shown = run("reports", "show", "999999")
    assert shown.returncode == 1 and "no report with id 999999" in shown.stderr
