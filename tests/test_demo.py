"""`mcp-worker demo` end to end on the embedded default, with Postgres and Redis out of reach.

As root (CI), the demo runs in a fresh network namespace where only loopback exists, so nothing
listens on 5432 or 6379 and the embedded default is all it can use. Elsewhere it runs with the
database and broker variables unset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from worker.demo.server import DATA_FILE

# The bound for one demo run; the subprocess timeout is a little above it.
DEMO_BOUND_S = 90


def _isolated_prefix() -> list[str]:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        print("note: not root or no unshare: the demo runs without network isolation")
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        print(f"note: unshare -n unavailable ({probe.stderr.decode().strip()}): no network isolation")
        return []
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "demo"]


def _processes_using(data_dir: Path) -> list[int]:
    """Pids whose environment names this data folder (the demo's children would)."""
    marker = f"MCP_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def run_demo(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_"))}
    env["MCP_DATA_DIR"] = str(data_dir)
    script = [sys.executable, "-m", "worker.cli", "demo"]
    return subprocess.run(
        [*_isolated_prefix(), *script], env=env, capture_output=True, text=True, timeout=DEMO_BOUND_S + 30
    )


def test_the_demo_runs_twice_on_the_embedded_default(tmp_path: Path) -> None:
    project = next(p for p in json.loads(DATA_FILE.read_text())["projects"] if p["id"] == 1)
    counts = Counter(w["status"] for w in project["work_packages"])
    for run in (1, 2):
        result = run_demo(tmp_path)
        output = result.stdout
        assert result.returncode == 0, f"run {run}:\n{output}\n{result.stderr}"
        table = output.split("Executions (mcp_executions):")[1].split("Weekly report")[0]
        assert table.count(" success ") == 3, table
        for transport in ("streamable_http", "stdio", "sse"):
            assert f" {transport} " in table
        assert f"**Progress**: {len(project['work_packages'])} tasks total" in output
        for status in ("Completed", "In Progress", "Blocked"):
            assert f"- {status}: {counts[status]}" in output
        assert _processes_using(tmp_path) == [], "the demo left processes behind"
    assert (tmp_path / "mcp-worker.sqlite3").exists()
