"""One recognisable api key through every path, and nowhere to be found afterwards.

A dedicated worker (its own Redis database, logging at DEBUG) runs successes, every error class,
retries, reports with refinement (accepted and failed), and a call whose arguments carry the key.
Then the key is searched for in the worker's log, every row of every table, every Redis key the
run left (results, tracebacks), every command Redis received (broker messages, via MONITOR), and
the CLI's output. OAuth services (issue 16) join in: a client secret, a private key (each of its
PEM lines), a revoked client's secret, and every access token the authorization server issued.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from oauth.oauth_helpers import rsa_key_pair, start_oauth_world
from processes import free_port, start_demo_server, start_flower, start_worker, wait_until
from testenv import LOG_DIR, OPENAI_TEST_KEY, RUN_ID, extra_redis_url

from worker.client import submit_report, submit_tool
from worker.db.engine import get_engine, session_scope
from worker.db.models import Base, McpExecution
from worker.execution import audit
from worker.services.store import save_service

CANARY = "sk-live-CANARY-7f3a9c2e1b5d"
FLOWER_AUTH = "ops:flower-password-for-the-leak-test"
OAUTH_SECRET = "oauth-client-secret-CANARY-4c1d9b"
OAUTH_REVOKED_SECRET = "oauth-revoked-secret-CANARY-9e2a51"
OAUTH_PRIVATE_KEY, OAUTH_PUBLIC_KEY = rsa_key_pair()
OAUTH_KEY_LINES = tuple(line for line in OAUTH_PRIVATE_KEY.splitlines() if "-----" not in line)
SECRETS = (CANARY, OPENAI_TEST_KEY, OAUTH_SECRET, OAUTH_REVOKED_SECRET, *OAUTH_KEY_LINES)
# The access tokens the OAuth authorization server issued during the test, added once known.
ISSUED_TOKENS: list[str] = []
USER = f"leaky-{uuid.uuid4().hex[:6]}"
TIMEOUT_S = 120.0


class Monitor:
    """Every command Redis receives while the test runs (MONITOR), kept as text."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            for command in monitor.listen():
                self.lines.append(str(command.get("command", "")))
                if self.stop.is_set():
                    return

    def __enter__(self) -> Monitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.client.ping()  # one more command wakes the listener so it can stop
        self.thread.join(timeout=10)


@pytest.fixture
def leak_env(openai_fake: Any, clean_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    url = extra_redis_url()
    # Celery reads these variables before its configuration: the producer app must see them.
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", url)
    env = {**os.environ, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "LOG_LEVEL": "DEBUG"}
    app = Celery("producer", broker=url, backend=url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    with ExitStack() as stack:
        # Every process is stopped whatever fails, including a later start.
        demo, demo_url = start_demo_server("streamable-http", LOG_DIR, token=CANARY)
        stack.callback(demo.stop)
        oauth_world = start_oauth_world(LOG_DIR)
        stack.callback(oauth_world.stop)
        monitor = stack.enter_context(Monitor(url))
        worker = start_worker(f"leaks-{RUN_ID}", LOG_DIR, env, loglevel="DEBUG")
        stack.callback(worker.stop)
        flower, flower_url = start_flower(LOG_DIR, env, FLOWER_AUTH)
        stack.callback(flower.stop)
        yield {
            "app": app,
            "url": url,
            "demo_url": demo_url,
            "worker": worker,
            "monitor": monitor,
            "env": env,
            "flower": flower_url,
            "oauth": oauth_world,
        }


def final(task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with session_scope() as session:
            row = audit.get(session, task_id)
            if row is not None and row.status in ("success", "error", "input_required"):
                return audit.as_dict(row)
        return None

    return wait_until(done, TIMEOUT_S, f"row {task_id}", interval=0.2)  # type: ignore[no-any-return]


def assert_clean(where: str, text: str) -> None:
    for secret in (*SECRETS, *ISSUED_TOKENS):
        assert secret not in text, f"a secret appears in {where}"


def test_a_key_echoed_back_by_a_server_is_masked_in_rows_and_results(
    worker_proc: Any, demo_http: str
) -> None:
    """A producer should never put a key in arguments; if a server echoes one back anyway (here
    the service's own key, passed along by mistake), what the worker stores masks it."""
    from testenv import DEMO_HTTP_TOKEN

    user = f"echo-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        save_service(
            session,
            {
                "user_id": user,
                "desc": "ok",
                "interaction_mode": "http",
                "url": demo_http,
                "api_key": DEMO_HTTP_TOKEN,
            },
        )
    row = final(submit_tool(user, "ok", "echo", {"message": f"my key is {DEMO_HTTP_TOKEN}"}).id)
    assert row["status"] == "success"
    assert DEMO_HTTP_TOKEN not in repr(row) and "***" in repr(row["result"])


def test_the_api_key_appears_nowhere(leak_env: dict[str, Any], openai_fake: Any) -> None:
    app = leak_env["app"]
    auth = {"type": "api_key", "value": CANARY}
    with session_scope() as session:
        for desc, mode, url in (
            ("ok", "streamable_http", leak_env["demo_url"]),
            ("down", "streamable_http", f"http://127.0.0.1:{free_port()}/mcp"),
            ("stdio", "stdio", f"{sys.executable} -m worker.demo.server --transport stdio --test-tools"),
        ):
            save_service(
                session,
                {
                    "user_id": USER,
                    "desc": desc,
                    "interaction_mode": mode,
                    "url": url,
                    "api_key": CANARY,
                    "auth": auth,
                    "params": {"project_id": 1},
                },
            )
    world = leak_env["oauth"]
    revoked = world.add_client(secret=OAUTH_REVOKED_SECRET)
    with session_scope() as session:
        for desc, auth in (
            ("oauth", {"client_id": world.add_client(secret=OAUTH_SECRET), "client_secret": OAUTH_SECRET}),
            (
                "oauth-key",
                {
                    "client_id": world.add_client(public_key=OAUTH_PUBLIC_KEY),
                    "private_key": OAUTH_PRIVATE_KEY,
                },
            ),
            ("oauth-revoked", {"client_id": revoked, "client_secret": OAUTH_REVOKED_SECRET}),
        ):
            save_service(
                session,
                {
                    "user_id": USER,
                    "desc": desc,
                    "interaction_mode": "streamable_http",
                    "url": world.mcp_url,
                    "api_key": "",
                    "auth": {"type": "oauth", **auth},
                },
            )
    world.admin("revoke", {"client_id": revoked})
    calls = [
        ("oauth", "whoami", {}, "success"),
        ("oauth-key", "whoami", {}, "success"),
        ("oauth-revoked", "whoami", {}, "error"),
        ("ok", "echo", {"message": "hello"}, "success"),
        ("ok", "whoami", {}, "success"),
        ("stdio", "whoami", {}, "success"),
        # The server repeats the key in its progress and its input request: the row keeps neither.
        ("ok", "repeat_credential", {}, "input_required"),
        ("stdio", "repeat_credential", {}, "input_required"),
        ("ok", "no_such_tool", {}, "error"),
        ("ok", "fetch_weekly_report", {"project_id": "x"}, "error"),
        ("stdio", "fail", {"message": "upstream refused"}, "error"),
        ("down", "echo", {"message": "x"}, "error"),
        ("ok", "sleep", {"seconds": 30}, "error"),
        ("nope", "echo", {}, "error"),
    ]
    task_ids = [(submit_tool(USER, s, t, a, app=app).id, expected) for s, t, a, expected in calls]
    openai_fake.polish()
    refined = submit_report(USER, "ok", period="2026-W47", refine=True, app=app).id
    assert final(refined)["status"] == "success"
    openai_fake.fail(401, message=f"Incorrect API key provided: {OPENAI_TEST_KEY}")
    failed_refine = submit_report(USER, "ok", period="2026-W46", refine=True, app=app).id
    for task_id, expected in [*task_ids, (failed_refine, "success")]:
        assert final(task_id)["status"] == expected, final(task_id)
    with get_engine().connect() as conn:
        repeated = conn.execute(
            sa.select(McpExecution.progress_message, McpExecution.input_request).where(
                McpExecution.user_id == USER, McpExecution.tool_name == "repeat_credential"
            )
        ).all()
    # Both rows kept what the server said, with the key masked: the redaction ran, not a drop.
    assert len(repeated) == 2
    for message, request in repeated:
        assert message == "signed in as ***", message
        assert "Go on as ***?" in repr(request), request
    ISSUED_TOKENS.extend(world.issued())
    assert len(ISSUED_TOKENS) >= 2

    # Rows of every table, as text.
    with get_engine().connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(sa.select(table)).all()
            assert_clean(
                f"table {table.name}",
                repr([tuple(r) for r in rows if table.name not in ("mcp_services", "mcp_oauth_tokens")]),
            )
            if table.name == "mcp_oauth_tokens":
                # The one place the tokens live (encrypted with MCP_SECRET_KEY when it is set).
                assert_clean(
                    "mcp_oauth_tokens",
                    repr([{k: v for k, v in r._mapping.items() if k != "access_token"} for r in rows]),
                )
            if table.name == "mcp_services":
                # The one place the key must live; nothing else in that table repeats it in clear.
                for row in rows:
                    assert CANARY not in repr(
                        {k: v for k, v in row._mapping.items() if k not in ("api_key", "auth")}
                    )

    # The CLI's output.
    cli = [sys.executable, "-m", "worker.cli"]
    outputs = [
        subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, env=leak_env["env"])
        for args in (
            ("services", "list", "--user", USER),
            ("services", "show", USER, "ok"),
            ("services", "show", USER, "oauth-key"),
            ("services", "check", USER, "oauth"),
            ("call", USER, "oauth", "whoami", "--wait", "--timeout", "60"),
            ("services", "list", "--json"),
            ("call", USER, "ok", "echo", "--args", '{"message": "cli"}', "--wait", "--timeout", "60"),
            ("reports", "list", "--user", USER),
        )
    ]
    for out in outputs:
        assert_clean(f"CLI output {out.args}", out.stdout + out.stderr)

    # Flower's task list (names, arguments, results, tracebacks of every task it saw).
    import httpx2

    user, password = FLOWER_AUTH.split(":")
    listed = httpx2.get(f"{leak_env['flower']}/api/tasks", auth=(user, password), timeout=30)
    assert listed.status_code == 200 and len(listed.json()) >= len(task_ids)
    assert_clean("Flower's /api/tasks", listed.text)

    # Results, tracebacks and anything else left in the run's Redis database.
    client = redis.Redis.from_url(leak_env["url"])
    for key in client.scan_iter(count=500):
        kind = client.type(key)
        value = client.get(key) if kind == b"string" else repr(client.dump(key))
        assert_clean(f"redis key {key!r}", repr(value))

    # Every command the broker received: task messages, results, events.
    assert len(leak_env["monitor"].lines) > 50
    assert_clean("commands sent to Redis", "\n".join(leak_env["monitor"].lines))

    # The worker's whole log at DEBUG.
    leak_env["worker"].stop()
    log = leak_env["worker"].log()
    assert "DEBUG" in log and "execution" in log
    assert_clean("the worker log", log)


# Issue 17: the SMTP password (in MCP_SMTP_URL), a webhook's HMAC secret and a Slack webhook URL
# (its path is the token) through every delivery path: saved by the CLI, sent, retried, refused.
SMTP_CANARY = "smtp-CANARY-pass-4e1d9b"
WEBHOOK_CANARY = "whsec-CANARY-8a2f6c0d3e"
SLACK_CANARY = "T0CANARY/B0CANARY/slackCANARYtoken"


def test_the_smtp_password_and_webhook_secrets_appear_nowhere(
    clean_db: None, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from cryptography.fernet import Fernet
    from fakes.smtp_server import SmtpServer
    from fakes.webhook_receiver import WebhookReceiver

    from worker.cli import main
    from worker.db.models import McpReportDelivery
    from worker.reports.storage import insert_report
    from worker.settings import reset_settings

    url = extra_redis_url()
    smtp_port = free_port()
    env = {
        **os.environ,
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "LOG_LEVEL": "DEBUG",
        "MCP_SECRET_KEY": Fernet.generate_key().decode(),
        "MCP_SMTP_URL": f"smtp://bot:{SMTP_CANARY}@127.0.0.1:{smtp_port}",
        "MCP_SMTP_FROM": "reports@leaks.test",
        "MCP_DELIVERY_MAX_RETRIES": "1",
        "MCP_DELIVERY_RETRY_BACKOFF_S": "0.2",
    }
    secrets = (SMTP_CANARY, WEBHOOK_CANARY, SLACK_CANARY)
    producer = Celery(f"leaks-{uuid.uuid4().hex[:6]}", set_as_current=False)
    producer.conf.update(broker_read_url=url, broker_write_url=url, task_serializer="json")
    # The CLI runs in this process (its output captured), encrypting with the worker's key.
    monkeypatch.setenv("MCP_SECRET_KEY", env["MCP_SECRET_KEY"])
    reset_settings()

    def cli(*args: str) -> str:
        code = main(list(args))
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out + out.err

    with ExitStack() as stack:
        stack.callback(reset_settings)
        monitor = stack.enter_context(Monitor(url))
        smtp = stack.enter_context(SmtpServer(smtp_port, auth=("bot", SMTP_CANARY)))
        hooks = stack.enter_context(WebhookReceiver())
        hooks.script("/retry", [503, 200])
        hooks.script("/denied", [401])
        smtp.refuse("bounce@example.com")
        worker = start_worker(
            f"leaks-delivery-{RUN_ID}", LOG_DIR, env, queues="mcp.reports", loglevel="DEBUG"
        )
        stack.callback(worker.stop)
        stack.callback(producer.close)

        (tmp_path / "secret").write_text(WEBHOOK_CANARY)
        (tmp_path / "slack").write_text(hooks.url(f"/services/{SLACK_CANARY}"))
        outputs = [
            cli(
                "schedules", "add", USER, "weekly", "--email", "ok@example.com",
                "--email", "bounce@example.com", "--webhook", hooks.url(hook),
                "--webhook-secret-file", str(tmp_path / "secret"),
                "--slack-webhook-file", str(tmp_path / "slack"),
            )
            for hook in ("/retry", "/denied")
        ]  # fmt: skip
        # (stdout first: anything else this process logs meanwhile lands after it)
        schedule_ids = [json.JSONDecoder().raw_decode(out)[0]["id"] for out in outputs]
        with session_scope() as session:
            report_ids = [
                insert_report(
                    session,
                    {
                        "task_id": f"leak-{sid}",
                        "user_id": USER,
                        "service": "weekly",
                        "template": "weekly_report.j2",
                        "period": "2026-W47",
                        "content": "# Leak check\n",
                        "raw_content": "# Leak check\n",
                        "schedule_id": sid,
                    },
                )
                for sid in schedule_ids
            ]
        from worker.delivery.job import channels_for
        from worker.delivery.log import add_deliveries

        ids: list[int] = []
        for report_id, sid in zip(report_ids, schedule_ids, strict=True):
            items = channels_for([sid])
            with session_scope() as session:
                ids += add_deliveries(session, report_id, items, {i["key"]: i["type"] for i in items})
        for delivery_id in ids:
            producer.send_task("mcp.deliver_report", kwargs={"delivery_id": delivery_id}, queue="mcp.reports")

        def settled() -> bool:
            with session_scope() as session:
                statuses = session.scalars(
                    sa.select(McpReportDelivery.status).where(McpReportDelivery.id.in_(ids))
                ).all()
            return len(statuses) == len(ids) and all(s in ("delivered", "failed") for s in statuses)

        wait_until(settled, TIMEOUT_S, "every delivery to settle", interval=0.2)
        assert len(smtp.messages) == 2 and smtp.logins  # the password was used, and worked
        assert len(hooks.received("/retry")) == 2 and len(hooks.received("/denied")) == 1

        for args in (
            ("schedules", "list"),
            *(("schedules", "show", str(sid)) for sid in schedule_ids),
            *(("reports", "deliveries", str(rid), "--json") for rid in report_ids),
            *(("reports", "deliveries", str(rid)) for rid in report_ids),
            ("reports", "show", str(report_ids[0]), "--json"),
        ):
            outputs.append(cli(*args))
        for out in outputs:
            assert all(s not in out for s in secrets), f"a secret in CLI output {out}"

        with get_engine().connect() as conn:
            for table in Base.metadata.sorted_tables:
                text = repr([tuple(r) for r in conn.execute(sa.select(table)).all()])
                assert all(s not in text for s in secrets), f"a secret in table {table.name}"
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(count=500):
            value = client.get(key) if client.type(key) == b"string" else client.dump(key)
            assert all(s not in repr(value) for s in secrets), f"a secret in redis key {key!r}"
        commands = "\n".join(monitor.lines)
        assert "mcp.deliver_report" in commands
        assert all(s not in commands for s in secrets), "a secret in a command sent to Redis"
        worker.stop()
        log = worker.log()
        assert "DEBUG" in log and "delivery" in log
        assert all(s not in log for s in secrets), "a secret in the worker log"
