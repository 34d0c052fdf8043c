"""Helpers for the MCP runtime tests: demo servers on loopback, settings, service configs, /proc.

The demo server binds port 0 itself and prints the port it got, so starting one is race-free.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.processes import Child, children, cmdline, gone, spawn
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
    """A demo MCP server process over HTTP, and the URL it printed."""

    child: Child
    url: str

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        return self.child.popen

    def log(self) -> str:
        return self.child.log()

    def stop(self) -> None:
        self.child.stop(timeout=STOP_TIMEOUT)


def start_demo(transport: str, *, token: str | None = None, port: int = 0) -> DemoServer:
    """Start `python -m worker.demo.server` and wait for its "listening on" line."""
    argv = [PYTHON, "-m", "worker.demo.server", "--transport", transport, "--port", str(port), "--test-tools"]
    if token:
        argv += ["--token", token]
    child = spawn(f"demo-{transport}-{uuid.uuid4().hex[:8]}", argv, os.environ, Path(tempfile.gettempdir()))

    def listening() -> str | None:
        match = _LISTENING.search(child.log())
        return match.group(1) if match else None

    try:
        url = child.wait_for(listening, START_TIMEOUT, f"the {transport} demo server")
    except BaseException:  # a timeout, a dead process or ^C: leave nothing running
        child.kill_group()
        raise
    return DemoServer(child, url)


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
    return [pid for pid in children(os.getpid()) if fragment in cmdline(pid)]


def process_gone(pid: int) -> bool:
    """True when `pid` no longer exists (reaped), False while it runs or is a zombie."""
    return gone(pid)
