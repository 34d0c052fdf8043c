"""How the runtime fails: classified errors, bounded waits, dead sessions, reaped children."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from mcp_helpers import (
    PYTHON,
    STDIO_DEMO,
    DemoServer,
    children_running,
    make_settings,
    process_gone,
    service,
)

from worker import mcp
from worker.errors import (
    CommandNotAllowed,
    InvalidService,
    ProtocolError,
    ServerTimeout,
    ServerUnavailable,
    ToolInputRejected,
    UnknownTool,
)
from worker.processes import free_port, wait_until
from worker.services.config import ServiceConfig
from worker.settings import Settings

MODES = ["stdio", "sse", "streamable_http"]


def python_command(code: str) -> str:
    return f"{shlex.quote(PYTHON)} -c {shlex.quote(code)}"


@pytest.mark.parametrize("mode", MODES)
def test_unknown_tool(mode: str, configs: dict[str, ServiceConfig], settings: Settings) -> None:
    with pytest.raises(UnknownTool, match="no_such_tool"):
        mcp.call_tool(configs[mode], "no_such_tool", {}, settings=settings)


@pytest.mark.parametrize("mode", MODES)
def test_bad_arguments(mode: str, configs: dict[str, ServiceConfig], settings: Settings) -> None:
    with pytest.raises(ToolInputRejected, match="project_id") as info:
        mcp.call_tool(configs[mode], "fetch_weekly_report", {"project_id": "not a number"}, settings=settings)

    assert "\n" not in str(info.value) and "errors.pydantic.dev" not in str(info.value)


@pytest.mark.parametrize("mode", MODES)
def test_tool_error_is_an_outcome_not_an_exception(
    mode: str, configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    outcome = mcp.call_tool(
        configs[mode], "fail", {"message": "the\nproject is archived " + "x" * 900}, settings=settings
    )

    assert outcome.is_error is True
    assert outcome.message is not None and "the project is archived" in outcome.message
    assert "\n" not in outcome.message and len(outcome.message) <= 500
    unknown_project = mcp.call_tool(
        configs[mode], "fetch_weekly_report", {"project_id": 99}, settings=settings
    )
    assert unknown_project.is_error and "unknown project_id 99" in (unknown_project.message or "")


@pytest.mark.parametrize("mode", ["sse", "streamable_http"])
def test_nothing_listening_is_unavailable(mode: str, settings: Settings) -> None:
    config = service(mode, f"http://127.0.0.1:{free_port()}/mcp")

    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="cannot connect"):
        mcp.call_tool(config, "echo", {"message": "x"}, settings=settings)

    assert time.monotonic() - started < 5


def test_unresolvable_host_is_unavailable(settings: Settings) -> None:
    config = service("streamable_http", "http://no-such-host.invalid/mcp")

    with pytest.raises(ServerUnavailable):
        mcp.call_tool(config, "echo", {"message": "x"}, settings=settings)


def test_wrong_path_says_to_check_the_url(http_url: str, settings: Settings) -> None:
    config = service("streamable_http", http_url.replace("/mcp", "/nothere"))

    with pytest.raises(InvalidService, match="404"):
        mcp.call_tool(config, "echo", {"message": "x"}, settings=settings)


def test_stdio_server_that_exits_is_unavailable(settings: Settings) -> None:
    config = service("stdio", python_command("import sys; print('cannot start: no config', file=sys.stderr)"))

    with pytest.raises(ServerUnavailable, match="cannot start: no config"):
        mcp.call_tool(config, "echo", {"message": "x"}, settings=settings)


@pytest.mark.parametrize("mode", MODES)
def test_hung_server_times_out_within_the_bound(
    mode: str, configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    slow = service(mode, configs[mode].url, params={"call_timeout": 1})
    mcp.call_tool(slow, "echo", {"message": "warm up"}, settings=settings)

    started = time.monotonic()
    with pytest.raises(ServerTimeout, match="call timeout"):
        mcp.call_tool(slow, "sleep", {"seconds": 30}, settings=settings)
    elapsed = time.monotonic() - started

    assert 1 <= elapsed < 3
    assert mcp.call_tool(slow, "echo", {"message": "still usable"}, settings=settings).result == [
        "still usable"
    ]
    assert mcp.pool_stats()["sessions_opened"] == 1


def test_settings_call_timeout_applies(configs: dict[str, ServiceConfig]) -> None:
    settings = make_settings(MCP_CALL_TIMEOUT="1")

    started = time.monotonic()
    with pytest.raises(ServerTimeout):
        mcp.call_tool(configs["streamable_http"], "sleep", {"seconds": 30}, settings=settings)

    assert time.monotonic() - started < 4


def test_silent_stdio_server_hits_the_connect_timeout() -> None:
    config = service("stdio", python_command("import time; time.sleep(60)"), params={"connect_timeout": 1})

    started = time.monotonic()
    with pytest.raises(ServerTimeout, match="handshake"):
        mcp.call_tool(config, "echo", {"message": "x"}, settings=make_settings())

    assert time.monotonic() - started < 3
    wait_until(lambda: not children_running("time.sleep(60)"), 10, "the silent child to be killed")


@pytest.mark.parametrize("lingers", [False, True], ids=["exits", "lingers"])
def test_stdout_garbage_is_a_protocol_error(lingers: bool) -> None:
    code = "print('hello, I am not JSON-RPC', flush=True)" + (
        "; import time; time.sleep(60)" if lingers else ""
    )
    config = service("stdio", python_command(code), params={"connect_timeout": 2})

    with pytest.raises(ProtocolError, match="not JSON-RPC"):
        mcp.call_tool(config, "echo", {"message": "x"}, settings=make_settings())


def test_disallowed_command_is_refused_before_spawning(settings: Settings) -> None:
    config = service("stdio", "/bin/sh -c 'echo pwned'")

    with pytest.raises(CommandNotAllowed, match="MCP_STDIO_ALLOWED_COMMANDS") as info:
        mcp.call_tool(config, "echo", {"message": "x"}, settings=settings)

    assert "\n" not in str(info.value)
    assert mcp.pool_stats()["stdio_spawned"] == 0
    assert isinstance(info.value, CommandNotAllowed) and not info.value.retryable


def test_allowed_but_missing_command_is_invalid_service() -> None:
    settings = make_settings(MCP_STDIO_ALLOWED_COMMANDS="/nonexistent/mcp-server")

    with pytest.raises(InvalidService, match="installed"):
        mcp.call_tool(service("stdio", "/nonexistent/mcp-server --stdio"), "echo", {}, settings=settings)


@pytest.mark.faults
def test_killed_stdio_child_is_replaced_transparently(
    configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    first = mcp.call_tool(configs["stdio"], "whoami", {}, settings=settings).result["pid"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: process_gone(first), 10, "the killed child to be reaped")

    second = mcp.call_tool(configs["stdio"], "whoami", {}, settings=settings).result["pid"]

    assert second != first
    stats = mcp.pool_stats()
    assert stats["retries"] == 1 and stats["stdio_spawned"] == 2 and stats["open_stdio_sessions"] == 1


@pytest.mark.faults
def test_crashing_stdio_tool_is_retried_once_then_unavailable(
    configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    mcp.call_tool(configs["stdio"], "echo", {"message": "warm"}, settings=settings)

    with pytest.raises(ServerUnavailable, match="closed the connection"):
        mcp.call_tool(configs["stdio"], "crash", {}, settings=settings)

    stats = mcp.pool_stats()
    assert stats["retries"] == 1 and stats["stdio_spawned"] == 2
    assert mcp.call_tool(configs["stdio"], "echo", {"message": "back"}, settings=settings).result == ["back"]


@pytest.mark.faults
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_restarted_http_server_is_reconnected(
    transport: str, own_http_server: Callable[..., DemoServer], settings: Settings
) -> None:
    server = own_http_server(transport)
    mode = "sse" if transport == "sse" else "streamable_http"
    config = service(mode, server.url)
    assert mcp.call_tool(config, "echo", {"message": "one"}, settings=settings).result == ["one"]

    server.popen.kill()
    server.popen.wait(10)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    own_http_server(transport, port=port)

    assert mcp.call_tool(config, "echo", {"message": "two"}, settings=settings).result == ["two"]
    # SSE needs a new session; streamable HTTP at protocol 2026-07-28 is stateless, so the same
    # session simply reconnects.
    assert mcp.pool_stats()["sessions_opened"] == (2 if mode == "sse" else 1)


@pytest.mark.faults
def test_http_server_crash_mid_call(own_http_server: Callable[..., DemoServer], settings: Settings) -> None:
    config = service("streamable_http", own_http_server().url)
    mcp.call_tool(config, "echo", {"message": "warm"}, settings=settings)

    with pytest.raises(ServerUnavailable):
        mcp.call_tool(config, "crash", {}, settings=settings)


def test_concurrency_is_capped_per_service(configs: dict[str, ServiceConfig]) -> None:
    settings = make_settings(MCP_MAX_CONCURRENCY_PER_SERVICE="2")
    slow, other = (
        configs["streamable_http"],
        service("streamable_http", configs["streamable_http"].url, api_key="k2"),
    )
    mcp.call_tool(slow, "echo", {"message": "warm"}, settings=settings)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            mcp.call_tool(slow, "sleep", {"seconds": 0.6}, settings=settings)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until(lambda: mcp.pool_stats()["in_flight"] == 2, 5, "two calls in flight")
    other_started = time.monotonic()
    assert mcp.call_tool(other, "echo", {"message": "not blocked"}, settings=settings).result == [
        "not blocked"
    ]
    assert time.monotonic() - other_started < 0.5
    assert mcp.pool_stats()["in_flight"] <= 2
    for thread in threads:
        thread.join(10)

    assert not errors
    assert time.monotonic() - started >= 1.2  # two waves of two


def test_idle_sessions_close_after_the_ttl(configs: dict[str, ServiceConfig]) -> None:
    settings = make_settings(MCP_SESSION_IDLE_TTL="0.5")
    pid = mcp.call_tool(configs["stdio"], "whoami", {}, settings=settings).result["pid"]
    mcp.call_tool(configs["streamable_http"], "echo", {"message": "x"}, settings=settings)

    wait_until(lambda: mcp.pool_stats()["open_sessions"] == 0, 10, "idle sessions to close")
    wait_until(lambda: process_gone(pid), 10, "the idle stdio child to exit")

    assert mcp.call_tool(configs["stdio"], "echo", {"message": "again"}, settings=settings).result == [
        "again"
    ]
    assert mcp.pool_stats()["stdio_spawned"] == 2


@pytest.mark.faults
def test_shutdown_reaps_every_stdio_child(settings: Settings) -> None:
    pids = [
        mcp.call_tool(
            service("stdio", STDIO_DEMO, api_key=f"key-{i}"), "whoami", {}, settings=settings
        ).result["pid"]
        for i in range(3)
    ]
    assert sorted(children_running("--transport stdio")) == sorted(pids)

    mcp.shutdown_runtime()

    for pid in pids:
        wait_until(lambda pid=pid: process_gone(pid), 10, f"stdio child {pid} to be reaped")
    assert children_running("--transport stdio") == []
    assert mcp.pool_stats()["open_sessions"] == 0
    mcp.shutdown_runtime()  # idempotent


@pytest.mark.faults
@pytest.mark.parametrize("mode", ["stdio", "streamable_http"])
def test_shutdown_ends_calls_in_flight(
    mode: str, configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    mcp.call_tool(configs[mode], "echo", {"message": "warm"}, settings=settings)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            mcp.call_tool(configs[mode], "sleep", {"seconds": 30}, settings=settings)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    wait_until(lambda: mcp.pool_stats()["in_flight"] == 1, 5, "the call to start")
    started = time.monotonic()
    mcp.shutdown_runtime()
    thread.join(10)

    assert not thread.is_alive() and time.monotonic() - started < 8
    assert len(errors) == 1 and isinstance(errors[0], ServerUnavailable)
    assert children_running("--transport stdio") == []


@pytest.mark.faults
def test_runtime_is_recreated_in_a_forked_child(
    configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    parent_pid = mcp.call_tool(configs["stdio"], "whoami", {}, settings=settings).result["pid"]
    read_end, write_end = os.pipe()

    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            result: Any = mcp.call_tool(configs["stdio"], "whoami", {}, settings=settings).result
            os.write(write_end, str(result["pid"]).encode())
            mcp.shutdown_runtime()
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = os.waitpid(child, 0)
    child_server_pid = int(os.read(read_end, 64) or b"0")
    os.close(read_end)

    assert os.waitstatus_to_exitcode(status) == 0
    assert child_server_pid not in (0, parent_pid)
    assert mcp.call_tool(configs["stdio"], "whoami", {}, settings=settings).result["pid"] == parent_pid


@pytest.mark.faults
def test_shutdown_from_atexit_leaves_no_child(tmp_path: Any) -> None:
    script = tmp_path / "use_runtime.py"
    script.write_text(
        "import atexit, sys\n"
        "from worker import mcp\n"
        "from worker.services.config import ServiceConfig\n"
        "from worker.settings import Settings\n"
        "atexit.register(mcp.shutdown_runtime)\n"
        f"settings = Settings.from_env({{'MCP_STDIO_ALLOWED_COMMANDS': {PYTHON!r}}})\n"
        f"config = ServiceConfig(user_id='u', desc='d', mode='stdio', url={STDIO_DEMO!r}, endpoint=None, api_key='k')\n"
        "print(mcp.call_tool(config, 'whoami', {}, settings=settings).result['pid'], flush=True)\n"
    )

    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "destroyed but it is pending" not in done.stderr, done.stderr
    server_pid = int(done.stdout.strip())
    wait_until(lambda: process_gone(server_pid), 10, "the script's stdio server to exit")
