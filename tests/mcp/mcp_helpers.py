"""Helpers for the MCP runtime tests: demo servers on loopback, settings, service configs, /proc.

The demo server binds port 0 itself and prints the port it got, so starting one is race-free.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.loopback import wait_until
from worker.services.config import ServiceConfig
from worker.settings import Settings

PYTHON = sys.executable
DEMO_TOKEN = "demo-token-7f3a91c2"
STDIO_DEMO = f"{shlex.quote(PYTHON)} -m worker.demo.server --transport stdio --test-tools"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class DemoServer:
    """A demo MCP server process over HTTP; its stderr goes to `log_path`."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)


def start_demo(transport: str, *, token: str | None = None, port: int = 0) -> DemoServer:
    """Start `python -m worker.demo.server` and wait for its "listening on" line."""
    log_path = Path(tempfile.mkstemp(prefix=f"demo-{transport}-", suffix=".log")[1])
    argv = [PYTHON, "-m", "worker.demo.server", "--transport", transport, "--port", str(port), "--test-tools"]
    if token:
        argv += ["--token", token]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)

    def listening() -> str | None:
        if popen.poll() is not None:
            raise AssertionError(f"demo server exited early ({popen.returncode}):\n{log_path.read_text()}")
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        return match.group(1) if match else None

    try:
        url = wait_until(listening, START_TIMEOUT, f"the {transport} demo server")
    except BaseException:  # a timeout, a dead process or ^C: leave nothing running
        popen.kill()
        popen.wait(STOP_TIMEOUT)
        raise
    return DemoServer(popen, log_path, url)


def make_settings(**overrides: str) -> Settings:
    """Settings for these tests, built explicitly (os.environ is not read)."""
    env = {
        "MCP_DATA_DIR": tempfile.gettempdir(),
        "MCP_STDIO_ALLOWED_COMMANDS": PYTHON,
        "MCP_CONNECT_TIMEOUT": "15",
        "MCP_CALL_TIMEOUT": "10",
        "MCP_SESSION_IDLE_TTL": "300",
    }
    env.update(overrides)
    return Settings.from_env(env)


def service(
    mode: str, url: str | None, *, api_key: str = "key-user-1", desc: str = "demo", **fields: Any
) -> ServiceConfig:
    """A service config as the registry would produce it."""
    return ServiceConfig(
        user_id=fields.pop("user_id", "user1"),
        desc=desc,
        mode=mode,  # type: ignore[arg-type]
        url=url,
        endpoint=fields.pop("endpoint", "https://openproject.example"),
        api_key=api_key,
        params=fields.pop("params", {}),
        auth=fields.pop("auth", {}),
    )


def children_running(fragment: str) -> list[int]:
    """Pids of this process's live (non-zombie) children whose command line contains `fragment`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == os.getpid() and state != "Z" and fragment in cmdline:
            found.append(int(entry.name))
    return found


def process_gone(pid: int) -> bool:
    """True when `pid` no longer exists (reaped), False while it runs or is a zombie."""
    return not Path(f"/proc/{pid}").exists()
