"""The pieces without a worker: channels refused when saved, signatures, sanitized HTML, the retry
policy, the Slack size limit, the SMTP URL's errors (which never quote it), and STARTTLS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from delivery_helpers import delivery, log_deliveries, stored_report
from fakes.smtp_server import SmtpServer

from worker.cli import main
from worker.db.engine import session_scope
from worker.db.models import McpReportSchedule
from worker.delivery import channels as ch
from worker.delivery.email import smtp_config
from worker.delivery.errors import DeliveryRefused
from worker.delivery.http import SLACK_MAX_TEXT, retry_after, slack_payload
from worker.delivery.job import deliver, message_id, retry_delay
from worker.delivery.signing import sign, verify
from worker.errors import ConfigurationError, InvalidArguments
from worker.processes import free_port
from worker.reports.html import markdown_to_html
from worker.reports.render import build_context, render_template
from worker.settings import Settings, reset_settings

EVIL_TEMPLATE = """# {{ project.name }}

<script>alert("owned")</script>

<img src="x.png" onerror="alert(1)">

<a href="javascript:alert(2)" onclick="alert(3)">click</a>

- {{ total }} work packages
"""


@pytest.fixture
def allowed_hosts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MCP_ALLOWED_HOSTS", "hooks.example.com")
    reset_settings()
    yield
    monkeypatch.delenv("MCP_ALLOWED_HOSTS")
    reset_settings()


@pytest.mark.parametrize(
    "address", ["", "ops", "ops@", "@example.com", "a b@example.com", "x@y", "Ops <o@e.com>"]
)
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidArguments, match="not an email address"):
        ch.email_channel(address)


def test_webhook_urls_obey_allowed_hosts_and_need_a_long_secret(allowed_hosts: None) -> None:
    assert (
        ch.webhook_channel("https://hooks.example.com/mcp", "x" * 16).target
        == "https://hooks.example.com/mcp"
    )
    with pytest.raises(InvalidArguments, match="not in MCP_ALLOWED_HOSTS"):
        ch.webhook_channel("https://evil.example.net/mcp", "x" * 16)
    with pytest.raises(InvalidArguments, match="http"):
        ch.webhook_channel("ftp://hooks.example.com/x", "x" * 16)
    with pytest.raises(InvalidArguments, match="16 to 512"):
        ch.webhook_channel("https://hooks.example.com/mcp", "short")
    with pytest.raises(InvalidArguments) as refused:
        ch.slack_channel("https://hooks.slack.com/services/T1/B2/sEcReTtOkEn")
    assert "sEcReTtOkEn" not in str(refused.value)


@pytest.mark.usefixtures("clean_db")
def test_schedules_add_refuses_a_bad_channel_and_stores_nothing(
    capsys: pytest.CaptureFixture[str], allowed_hosts: None, tmp_path: object
) -> None:
    assert main(["schedules", "add", "sam", "weekly", "--email", "ok@example.com", "--email", "nope"]) == 1
    assert "'nope' is not an email address" in capsys.readouterr().err
    assert main(["schedules", "add", "sam", "weekly", "--webhook", "https://hooks.example.com/x"]) == 1
    assert "--webhook-secret-file" in capsys.readouterr().err
    with session_scope() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(McpReportSchedule)) == 0


def test_signatures_verify_with_the_secret_only_and_expire() -> None:
    body = b'{"report": 1}'
    headers = sign("s" * 20, body, now=1_000_000)
    stamp, signed = headers["X-MCP-Timestamp"], headers["X-MCP-Signature"]
    assert verify("s" * 20, body, stamp, signed, now=1_000_010)
    assert not verify("t" * 20, body, stamp, signed, now=1_000_010)
    assert not verify("s" * 20, body + b" ", stamp, signed, now=1_000_010)
    assert not verify("s" * 20, body, stamp, signed, now=1_000_000 + 3600)


@pytest.mark.usefixtures("clean_db")
def test_a_template_writing_script_or_onerror_gives_html_with_neither(
    capsys: pytest.CaptureFixture[str],
) -> None:
    context = build_context({"project": {"name": "P"}, "work_packages": []}, "2026-W47")
    markdown = render_template("evil.j2", EVIL_TEMPLATE, context).text
    assert "<script>" in markdown and "onerror=" in markdown  # the template did write them
    html = markdown_to_html(markdown)
    assert "<h1>P</h1>" in html and "<img" in html
    for bad in ("<script", "onerror", "onclick", "javascript:", "owned"):
        assert bad not in html.lower()

    report_id = stored_report(content=markdown)
    assert main(["reports", "show", str(report_id), "--html"]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>") and "<h1>P</h1>" in page
    assert "<script" not in page and "onerror" not in page


def test_retry_policy_backs_off_and_honours_retry_after() -> None:
    settings = Settings.from_env(
        {"MCP_DELIVERY_RETRY_BACKOFF_S": "2", "MCP_DELIVERY_RETRY_BACKOFF_MAX_S": "10"}
    )
    assert [retry_delay(n, None, settings) for n in range(4)] == [2, 4, 8, 10]
    assert retry_delay(0, 7.0, settings) == 7.0 and retry_delay(0, 99.0, settings) == 10
    now = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
    assert retry_after("30") == 30.0
    assert retry_after("Thu, 03 Dec 2026 10:00:45 GMT", now=now) == 45.0
    assert retry_after("soon") is None and retry_after(None) is None


def test_slack_text_stays_within_its_limit_and_says_where_the_rest_is() -> None:
    payload = slack_payload("Weekly (2026-W47)", "- line\n" * 2000, "mcp-worker reports show 9")
    assert len(payload["text"]) <= SLACK_MAX_TEXT
    assert payload["text"].startswith("*Weekly (2026-W47)*") and "reports show 9" in payload["text"]


def test_message_ids_are_stable_per_report_and_channel() -> None:
    key = ch.email_channel("a@example.com").key
    assert message_id(5, key, "r@mail.example") == message_id(5, key, "r@mail.example")
    assert message_id(5, key, "r@mail.example") != message_id(6, key, "r@mail.example")
    assert message_id(5, key, "r@mail.example").endswith("@mail.example>")


def test_a_bad_smtp_url_is_refused_without_quoting_it() -> None:
    for url in ("http://u:hunter2-secret@mail:25", "smtp://u:hunter2-secret@mail:notaport"):
        settings = Settings.from_env({"MCP_SMTP_URL": url, "MCP_SMTP_FROM": "r@example.com"})
        with pytest.raises(ConfigurationError) as refused:
            smtp_config(settings)
        assert "hunter2" not in str(refused.value)
    parsed = smtp_config(
        Settings.from_env({"MCP_SMTP_URL": "smtps://u%40x:p%3Aw@mail.example", "MCP_SMTP_FROM": "r@x.io"})
    )
    assert (parsed.scheme, parsed.port, parsed.username, parsed.password) == ("smtps", 465, "u@x", "p:w")
    assert "hunter2" not in repr(Settings.from_env({"MCP_SMTP_URL": "smtp://u:hunter2@m:25"}))


@pytest.mark.usefixtures("clean_db")
def test_report_deliver_is_refused_when_no_schedule_has_channels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "nobody", "weekly", "--deliver"]) == 1
    assert "no schedule of 'nobody'/'weekly' has delivery channels" in capsys.readouterr().err


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key (the CA file is the certificate)."""
    import ipaddress
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp.crt", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.mark.usefixtures("clean_db")
def test_smtp_url_sends_over_starttls_and_refuses_a_certificate_it_cannot_verify(tmp_path: Path) -> None:
    """`deliver` itself (no worker): STARTTLS first, then AUTH, against a server that requires
    both; with the system's CAs only, the server's self-signed certificate is refused at once."""
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    port = free_port()
    base = {"MCP_SMTP_URL": f"smtp://bot:tls-pass-0001@127.0.0.1:{port}", "MCP_SMTP_FROM": "r@example.com"}
    report_id = stored_report()
    ok_id, bad_id = log_deliveries(
        report_id, [ch.email_channel("tls@example.com"), ch.email_channel("x@example.com")]
    )
    with SmtpServer(port, auth=("bot", "tls-pass-0001"), tls=server_tls) as smtp:
        sent = deliver(
            task_id="tls-ok",
            delivery_id=ok_id,
            final_attempt=True,
            settings=Settings.from_env({**base, "MCP_SMTP_CA_FILE": str(cert)}),
        )
        assert sent.status == "delivered" and smtp.logins == ["bot"]
        [message] = smtp.wait_for(1)
        assert message["To"] == "tls@example.com"
        with pytest.raises(DeliveryRefused, match="TLS"):
            deliver(
                task_id="tls-bad", delivery_id=bad_id, final_attempt=False, settings=Settings.from_env(base)
            )
    row = delivery(bad_id)
    assert (row.status, row.attempts) == ("failed", 1) and "certificate" in (row.last_error or "").lower()
