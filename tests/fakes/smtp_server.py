"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it accepts.

    with SmtpServer(port) as smtp:                  # a port chosen by the test, so it can be
        ...                                         # started after a worker was told about it
        smtp.wait_for(1)
        message = smtp.messages[0]                  # an email.message.EmailMessage

`hold_next_rcpt()` makes the next RCPT TO wait (at most `HOLD_LIMIT_S`) until `release()`: a test
kills the sending worker while it is inside the SMTP conversation, before the message is accepted.
`refuse(address)` answers 550 to RCPT TO for that address. With `auth=(user, password)` the
server requires AUTH LOGIN/PLAIN (allowed without TLS: loopback only). With `tls` (a server
context) it offers STARTTLS and requires it before anything else, AUTH included.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import warnings
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# Longest a held RCPT waits, whatever a test does: a forgotten hold must not stall the suite.
HOLD_LIMIT_S = 30.0
# How often a held RCPT looks for its release.
POLL_S = 0.05


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.server.refused:
            return "550 5.1.1 no such user here"
        if self.server._hold.is_set():
            self.server._hold.clear()
            self.server.holding.set()
            deadline = time.monotonic() + HOLD_LIMIT_S
            while not self.server._released.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(POLL_S)
            self.server.holding.clear()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.server._lock:
            self.server.messages.append(message)
            self.server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(
        self, port: int, auth: tuple[str, str] | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.port = port
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refused: set[str] = set()
        self.logins: list[str] = []
        self.holding = threading.Event()
        self._hold = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {}
        if auth is not None:
            user, password = auth

            def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == (
                    user,
                    password,
                )
                if ok:
                    self.logins.append(user)
                return AuthResult(success=ok)

            kwargs.update(authenticator=check, auth_required=True, auth_require_tls=tls is not None)
        if tls is not None:
            kwargs.update(tls_context=tls, require_starttls=True)
        with warnings.catch_warnings():
            # AUTH without TLS is what this loopback-only server is for
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._controller.stop()

    def hold_next_rcpt(self) -> None:
        self._released.clear()
        self._hold.set()

    def release(self) -> None:
        self._released.set()

    def refuse(self, address: str) -> None:
        self.refused.add(address)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(POLL_S)
        raise AssertionError(
            f"SMTP server got {len(self.messages)} messages, expected {count} within {timeout} s"
        )
