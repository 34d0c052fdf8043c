"""The runtime against the real demo server over stdio, SSE and streamable HTTP."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mcp_helpers import DEMO_TOKEN, STDIO_DEMO, children_running, make_settings, service

from worker import mcp
from worker.errors import AuthenticationFailed, ServerUnavailable
from worker.services.config import ServiceConfig
from worker.settings import Settings

MODES = ["stdio", "sse", "streamable_http"]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@pytest.mark.parametrize("mode", MODES)
def test_weekly_report_over_each_transport(
    mode: str, configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    outcome = mcp.call_tool(
        configs[mode], "fetch_weekly_report", {"project_id": 1, "week": "2026-W47"}, settings=settings
    )

    assert outcome.is_error is False and outcome.message is None
    report = outcome.result
    assert report["project"] == {"id": 1, "name": "Website Relaunch"}
    assert report["week"] == "2026-W47"
    packages = report["work_packages"]
    assert 8 <= len(packages) <= 12
    assert set(packages[0]) >= {"id", "subject", "status", "assignee", "due_date", "priority"}
    assert {p["status"] for p in packages} == {"New", "In Progress", "Completed", "Blocked"}
    assert any(p["assignee"] is None for p in packages)
    assert any(p["overdue"] for p in packages)
    # Deterministic relative to the week: 2026-W47 runs Mon 16 to Sun 22 November.
    wp103 = next(p for p in packages if p["id"] == 103)
    assert wp103["due_date"] == "2026-11-18" and wp103["overdue"] is True
    assert mcp.pool_stats()["open_sessions"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_text_results_and_list_tools(
    mode: str, configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    assert mcp.call_tool(configs[mode], "echo", {"message": "héllo"}, settings=settings).result == ["héllo"]

    tools = {t["name"]: t for t in mcp.list_tools(configs[mode], settings=settings)}

    assert {"fetch_weekly_report", "list_projects", "echo", "whoami", "sleep", "fail"} <= set(tools)
    assert tools["echo"]["input_schema"]["required"] == ["message"]
    assert tools["echo"]["description"]
    assert mcp.pool_stats()["sessions_opened"] == 1


def test_warm_stdio_pool_spawns_the_server_once(
    configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    pids = {mcp.call_tool(configs["stdio"], "whoami", {}, settings=settings).result["pid"] for _ in range(20)}

    assert len(pids) == 1
    stats = mcp.pool_stats()
    assert stats["stdio_spawned"] == 1 and stats["sessions_opened"] == 1 and stats["open_stdio_sessions"] == 1
    assert children_running("--transport stdio") == list(pids)


@pytest.mark.parametrize("mode", ["sse", "streamable_http"])
def test_warm_http_pool_reuses_one_session(
    mode: str, configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    for i in range(20):
        assert mcp.call_tool(configs[mode], "echo", {"message": str(i)}, settings=settings).result == [str(i)]

    assert mcp.pool_stats()["sessions_opened"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_each_api_key_gets_its_own_session(
    mode: str, configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    base = configs[mode]
    alice = service(mode, base.url, api_key="alice-key-0001", user_id="alice")
    bob = service(mode, base.url, api_key="bob-key-0002", user_id="bob")

    seen_alice = mcp.call_tool(alice, "whoami", {}, settings=settings).result
    seen_bob = mcp.call_tool(bob, "whoami", {}, settings=settings).result
    again_alice = mcp.call_tool(alice, "whoami", {}, settings=settings).result

    assert seen_alice["key_sha256"] == digest("alice-key-0001") == again_alice["key_sha256"]
    assert seen_bob["key_sha256"] == digest("bob-key-0002")
    assert mcp.pool_stats()["sessions_opened"] == 2
    if mode == "stdio":
        assert seen_alice["pid"] != seen_bob["pid"] and seen_alice["pid"] == again_alice["pid"]
        assert seen_alice["endpoint"] == "https://openproject.example"


@pytest.mark.parametrize("mode", ["sse", "streamable_http"])
def test_bearer_and_x_api_key_headers(
    mode: str, token_http_url: str, token_sse_url: str, settings: Settings
) -> None:
    url = token_sse_url if mode == "sse" else token_http_url
    bearer = service(mode, url, api_key=DEMO_TOKEN)
    header = service(mode, url, api_key=DEMO_TOKEN, auth={"type": "api_key", "header": "X-API-Key"})

    for config in (bearer, header):
        assert mcp.call_tool(config, "whoami", {}, settings=settings).result["key_sha256"] == digest(
            DEMO_TOKEN
        )
    assert mcp.pool_stats()["sessions_opened"] == 2  # the auth dict is part of the credential hash


@pytest.mark.parametrize("mode", ["sse", "streamable_http"])
def test_wrong_key_is_authentication_failed(mode: str, token_http_url: str, token_sse_url: str) -> None:
    url = token_sse_url if mode == "sse" else token_http_url
    wrong = service(mode, url, api_key="wrong-key-5555")

    with pytest.raises(AuthenticationFailed) as info:
        mcp.call_tool(wrong, "echo", {"message": "x"}, settings=make_settings())

    assert "401" in str(info.value) and "wrong-key-5555" not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode", ["sse", "streamable_http"])
def test_auth_type_none_sends_no_credential(
    mode: str, configs: dict[str, ServiceConfig], settings: Settings
) -> None:
    config = service(mode, configs[mode].url, api_key="never-sent-1234", auth={"type": "none"})

    assert mcp.call_tool(config, "whoami", {}, settings=settings).result["key_sha256"] is None


def test_stdio_server_refusing_the_key_is_unavailable_with_its_reason(settings: Settings) -> None:
    refusing = service("stdio", f"{STDIO_DEMO} --token {DEMO_TOKEN}", api_key="wrong-key-5555")

    with pytest.raises(ServerUnavailable) as info:
        mcp.call_tool(refusing, "echo", {"message": "x"}, settings=settings)

    assert "does not match the server's token" in str(info.value)
    assert mcp.call_tool(
        service("stdio", refusing.url, api_key=DEMO_TOKEN), "echo", {"message": "ok"}, settings=settings
    )


def test_stdio_credentials_travel_in_the_environment_only(settings: Settings) -> None:
    config = service(
        "stdio",
        STDIO_DEMO,
        api_key="stdio-secret-9876",
        auth={"env": {"OPENPROJECT_API_KEY": "$api_key", "OPENPROJECT_URL": "$endpoint", "FLAVOUR": "plain"}},
    )

    def env_digest(name: str) -> str | None:
        return mcp.call_tool(config, "env_digest", {"name": name}, settings=settings).result["sha256"]

    assert env_digest("MCP_SERVICE_API_KEY") == digest("stdio-secret-9876")
    assert env_digest("OPENPROJECT_API_KEY") == digest("stdio-secret-9876")
    assert env_digest("MCP_SERVICE_ENDPOINT") == digest("https://openproject.example")
    assert env_digest("OPENPROJECT_URL") == digest("https://openproject.example")
    assert env_digest("FLAVOUR") == digest("plain")
    assert env_digest("DATABASE_URL") is None  # the worker's own environment is not inherited
    pid = mcp.call_tool(config, "whoami", {}, settings=settings).result["pid"]
    assert b"stdio-secret-9876" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_default_stdio_command_when_url_is_empty() -> None:
    settings = make_settings(MCP_STDIO_DEFAULT_COMMAND=STDIO_DEMO)

    outcome = mcp.call_tool(service("stdio", None), "whoami", {}, settings=settings)

    assert outcome.result["transport"] == "stdio"


@pytest.mark.parametrize("mode", ["stdio", "streamable_http"])
def test_large_result(mode: str, configs: dict[str, ServiceConfig], settings: Settings) -> None:
    size = 1_500_000  # over the SDK's default 1 MiB SSE event limit

    outcome = mcp.call_tool(configs[mode], "big_result", {"size_bytes": size}, settings=settings)

    assert len(outcome.result[0]) == size


def test_stdio_sessions_past_the_cap_close_the_least_recently_used_idle_one() -> None:
    capped = make_settings(MCP_MAX_STDIO_SESSIONS="2")
    users = [service("stdio", STDIO_DEMO, api_key=f"user-key-{i:04d}", user_id=f"u{i}") for i in range(3)]
    pids = [mcp.call_tool(u, "whoami", {}, settings=capped).result["pid"] for u in users[:2]]
    mcp.call_tool(users[1], "whoami", {}, settings=capped)  # u0 is now the least recently used

    third = mcp.call_tool(users[2], "whoami", {}, settings=capped).result["pid"]

    stats = mcp.pool_stats()
    assert stats["open_stdio_sessions"] == 2 and stats["stdio_spawned"] == 3
    # u0's child is closed and reaped; u1's (recently used) and u2's run.
    from processes import wait_until

    wait_until(
        lambda: sorted(children_running("--transport stdio")) == sorted([pids[1], third]),
        15,
        "u0's child to exit",
    )
    again = mcp.call_tool(users[1], "whoami", {}, settings=capped).result["pid"]
    assert again == pids[1]
