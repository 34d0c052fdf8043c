"""Email over SMTP: a multipart message (plain text and sanitized HTML) with a stable Message-ID.

`MCP_SMTP_URL` is `smtp://[user:pass@]host[:port]` (STARTTLS when the server offers it, and
required before a password goes over a non-loopback connection) or `smtps://...` (TLS from the
start); the server's certificate is verified against the system's CAs, or MCP_SMTP_CA_FILE.
`MCP_SMTP_FROM` is the sender. The Message-ID is derived from the report and the channel,
so a copy sent again after a crash (at-least-once) is recognised by mail systems as the same one.
"""

from __future__ import annotations

import ipaddress
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlsplit

from worker.delivery.errors import DeliveryRefused, DeliveryUnavailable
from worker.errors import ConfigurationError
from worker.settings import Settings

DEFAULT_PORTS = {"smtp": 587, "smtps": 465}


@dataclass(frozen=True)
class SmtpConfig:
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def smtp_config(settings: Settings) -> SmtpConfig:
    """MCP_SMTP_URL parsed.

    Raises:
        ConfigurationError: unset or not an smtp(s):// URL (the message never quotes it).
    """
    raw = (settings.smtp_url or "").strip()
    if not raw:
        raise ConfigurationError("email delivery needs MCP_SMTP_URL (smtp://user:pass@host:587)")
    if not settings.smtp_from:
        raise ConfigurationError("email delivery needs MCP_SMTP_FROM (the sender address)")
    parts = urlsplit(raw)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigurationError("MCP_SMTP_URL must look like smtp://user:pass@host:587 or smtps://host:465")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ConfigurationError("MCP_SMTP_URL has a port that is not a number") from None
    return SmtpConfig(
        parts.scheme,
        parts.hostname,
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def build_message(
    *, sender: str, to: str, subject: str, text: str, html: str, message_id: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def send_email(
    message: EmailMessage, config: SmtpConfig, timeout: float, ca_file: Path | None = None
) -> None:
    """Hand `message` to the SMTP server.

    Raises:
        DeliveryUnavailable: no connection, a timeout, a disconnect, or a 4xx answer (try later).
        DeliveryRefused: a 5xx answer (recipient or sender refused, authentication failed), or no
            STARTTLS where a password would go in clear, or a certificate that does not verify.
        ConfigurationError: MCP_SMTP_CA_FILE cannot be read.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"MCP_SMTP_CA_FILE {str(ca_file)!r} cannot be used: {exc}") from None
    try:
        _send(message, config, timeout, context)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        text = "; ".join(f"{code} {_text(msg)}" for code, msg in exc.recipients.values())
        if codes and all(400 <= code < 500 for code in codes):
            raise DeliveryUnavailable(f"SMTP recipient deferred: {text}", code=codes[0]) from None
        raise DeliveryRefused(f"SMTP recipient refused: {text}", code=codes[0] if codes else None) from None
    except smtplib.SMTPResponseException as exc:
        what = f"SMTP {exc.smtp_code} {_text(exc.smtp_error)}"
        if 400 <= exc.smtp_code < 500:
            raise DeliveryUnavailable(what, code=exc.smtp_code) from None
        raise DeliveryRefused(what, code=exc.smtp_code) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryRefused(f"SMTP server: {exc}") from None
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError) as exc:
        raise DeliveryUnavailable(f"SMTP server disconnected: {exc}") from None
    except TimeoutError:
        raise DeliveryUnavailable(
            f"SMTP server {config.host}:{config.port} timed out after {timeout:.0f} s"
        ) from None
    except ssl.SSLError as exc:
        raise DeliveryRefused(f"SMTP TLS failed: {exc.reason or exc}") from None
    except OSError as exc:  # refused, unreachable, DNS
        reason = exc.strerror or type(exc).__name__
        raise DeliveryUnavailable(f"SMTP server {config.host}:{config.port} unreachable: {reason}") from None


def _send(message: EmailMessage, config: SmtpConfig, timeout: float, context: ssl.SSLContext) -> None:
    client: smtplib.SMTP
    if config.scheme == "smtps":
        client = smtplib.SMTP_SSL(config.host, config.port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(config.host, config.port, timeout=timeout)
    with client:
        client.ehlo_or_helo_if_needed()
        if config.scheme == "smtp":
            if client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            elif config.password and not config.loopback:
                raise smtplib.SMTPNotSupportedError(
                    "no STARTTLS offered; refusing to send the SMTP password in clear (use smtps://)"
                )
        if config.username and config.password:
            client.login(config.username, config.password)
        client.send_message(message)


def _text(raw: bytes | str) -> str:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())[:300]


def message_domain(sender: str) -> str:
    """The domain for Message-IDs: the sender's, else this host's name."""
    _, _, domain = sender.rpartition("@")
    domain = domain.strip().strip(">").strip()
    return domain or socket.getfqdn() or "mcp-worker.invalid"
