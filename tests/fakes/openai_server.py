"""A fake OpenAI server: a real HTTP server on 127.0.0.1 speaking `POST /v1/chat/completions`.

Tests point the official `openai` client at `server.base_url` and choose how it answers:

    with FakeOpenAI() as server:
        server.reply(lambda user: user.replace("Weekly", "Weekly (polished)"))
        ...                                   # or server.fail(500), server.hang(5), server.drop_numbers("3")
        assert "raw text" in server.requests[0].user_content

Every request is recorded (path, headers, parsed JSON body). A hanging request sleeps at most
`hang_limit` seconds and is woken when the server closes, so tests never wait unboundedly.
The `fake_openai` pytest fixture in `tests/reports/conftest.py` wraps this class.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Transform = Callable[[str], str]

# Longest a `hang` may last, whatever a test asks: a forgotten hang must not stall the suite.
DEFAULT_HANG_LIMIT = 10.0
# How often the serving loop checks for shutdown: `close()` returns within about this long.
POLL_INTERVAL = 0.05
# How long `close()` waits for the serving thread to finish.
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return messages if isinstance(messages, list) else []

    @property
    def user_content(self) -> str:
        """The text of the last user message (what the report refiner sends)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _text(message.get("content"))
        return ""


@dataclass
class _Mode:
    kind: str = "reply"  # reply | fail | hang | raw
    transform: Transform = lambda user: user
    status: int = 200
    message: str = ""
    seconds: float = 0.0
    body: bytes = b""
    content_type: str = "application/json"
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    """The fake server; start it with `with FakeOpenAI() as server:` (or `start()`/`close()`)."""

    def __init__(self, *, hang_limit: float = DEFAULT_HANG_LIMIT) -> None:
        self.hang_limit = hang_limit
        self.requests: list[RecordedRequest] = []
        self._mode = _Mode()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # -- modes -------------------------------------------------------------------------------
    def reply(self, answer: str | Transform = lambda user: user, *, finish_reason: str = "stop") -> None:
        """Answer 200 with `answer` (a fixed text, or a function of the user message's text)."""
        transform: Transform = answer if callable(answer) else (lambda _user: answer)
        self._set(_Mode(kind="reply", transform=transform, finish_reason=finish_reason))

    def polish(self, suffix: str = "\n\n_Polished by the fake model._") -> None:
        """Answer with the user's text (the raw report) plus `suffix`: every fact is kept."""
        self.reply(lambda user: user + suffix)

    def drop_numbers(self, *numbers: str) -> None:
        """Answer with the user's text minus the given whole numbers (all numbers if none given)."""
        pattern = r"\d+" if not numbers else "|".join(re.escape(n) for n in numbers)
        regex = re.compile(rf"(?<!\d)(?:{pattern})(?!\d)")
        self.reply(lambda user: regex.sub("several", user))

    def fail(self, status: int = 500, message: str = "The server had an error", **headers: str) -> None:
        """Answer `status` with an OpenAI-style error body (and any extra headers)."""
        self._set(_Mode(kind="fail", status=status, message=message, headers=headers))

    def hang(self, seconds: float) -> None:
        """Read the request, then answer nothing for `seconds` (at most `hang_limit`) and hang up."""
        self._set(_Mode(kind="hang", seconds=min(seconds, self.hang_limit)))

    def raw(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        """Answer with exactly these bytes."""
        self._set(_Mode(kind="raw", status=status, body=body, content_type=content_type))

    def _set(self, mode: _Mode) -> None:
        with self._lock:
            self._mode = mode

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def start(self) -> FakeOpenAI:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(POLL_INTERVAL,), name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wake hanging handlers, hang up every connection, and join the thread."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                connections = list(self._connections)
            for conn in connections:
                with contextlib.suppress(OSError):  # already closed by the client
                    conn.shutdown(socket.SHUT_RDWR)
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- used by the handler -----------------------------------------------------------------
    def _record(self, request: RecordedRequest) -> tuple[_Mode, int]:
        with self._lock:
            self.requests.append(request)
            self._counter += 1
            return self._mode, self._counter

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _handler_class(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API does

        def setup(self) -> None:
            super().setup()
            fake._track(self.connection, add=True)

        def finish(self) -> None:
            fake._track(self.connection, add=False)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: Any = json.loads(raw or b"null")
            except ValueError:
                body = raw.decode("utf-8", "replace")
            headers = {key.lower(): value for key, value in self.headers.items()}
            request = RecordedRequest("POST", self.path, headers, body)
            mode, number = fake._record(request)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, _error_body("Unknown path " + self.path, "invalid_request_error"))
            elif mode.kind == "hang":
                fake._stopping.wait(mode.seconds)
                self.close_connection = True  # hang up without an answer
            elif mode.kind == "fail":
                error_type = "server_error" if mode.status >= 500 else "invalid_request_error"
                self._send(mode.status, _error_body(mode.message, error_type), mode.headers)
            elif mode.kind == "raw":
                self._send(mode.status, mode.body, content_type=mode.content_type)
            else:
                self._send(200, _completion(request, mode, number))

        def _send(
            self,
            status: int,
            payload: bytes,
            headers: dict[str, str] | None = None,
            content_type: str = "application/json",
        ) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _error_body(message: str, error_type: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    ).encode()


def _completion(request: RecordedRequest, mode: _Mode, number: int) -> bytes:
    user = request.user_content
    text = mode.transform(user)
    prompt_tokens = sum(len(_text(m.get("content")).split()) for m in request.messages)
    completion_tokens = len(text.split())
    model = request.body.get("model") if isinstance(request.body, dict) else None
    payload = {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": mode.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return json.dumps(payload).encode()
