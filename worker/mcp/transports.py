"""How to reach one service's MCP server: one async context manager per transport.

Each of `stdio_transport`, `sse_transport` and `streamable_http_transport` takes the same three
arguments and yields the SDK's `(read, write)` streams, owning whatever it opened for them (a
child process and its stderr pipe, an `httpx2.AsyncClient`); `open_client` wraps the right one in
an `mcp.Client`. A `Probe` records what the SDK does not report, so errors can be classified:
the last HTTP error status, output that was not JSON-RPC, the tail of a stdio child's stderr.

Credentials travel as headers (HTTP) or environment variables (stdio), never on a command line.
An `oauth` service's requests carry a bearer token from `worker.oauth` instead of its api key:
the transport gets one before it connects (so a refused client fails the session's opening with
its own message) and sends every request through `OAuthBearer`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import shlex
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client import IncomingMessage
from mcp.client._transport import TransportStreams  # the SDK's transports use it; no public alias yet
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import DEFAULT_MAX_SSE_EVENT_SIZE, MCP_SESSION_ID, streamable_http_client
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import Implementation, InitializeResult, ServerCapabilities

from worker.errors import WorkerError
from worker.mcp.http_sessions import ServerSession, end_session
from worker.oauth.settings import oauth_client
from worker.services.config import ServiceConfig, Timeouts, stdio_command, timeouts_for
from worker.settings import Settings

logger = logging.getLogger(__name__)
stderr_logger = logging.getLogger("worker.mcp.stderr")

# Slack on top of the call timeout for httpx reads: the SDK's own request timeout must fire first,
# because an httpx ReadTimeout inside a streamable HTTP POST tears down the whole session.
HTTP_READ_SLACK = 5.0
# How long an idle SSE stream may stay silent before the client drops it; servers ping every
# ~15 s, so only a dead connection reaches this, and the next call reopens the session.
SSE_IDLE_READ_TIMEOUT = 120.0
# Time for a stdio child's last stderr lines to arrive after its session closed.
STDERR_DRAIN_TIMEOUT = 0.5
# Lines of a stdio child's stderr kept to explain its death in an error message.
STDERR_TAIL_LINES = 20
# Longest stderr line logged or kept; a server dumping a blob must not flood the worker's logs.
STDERR_LINE_MAX = 1000
# Streamable HTTP responses sent as one SSE event may be this large (the SDK default is 1 MiB).
MAX_SSE_EVENT_FLOOR = DEFAULT_MAX_SSE_EVENT_SIZE

CLIENT_INFO = Implementation(name="mcp-worker", version="0.1.0")


@dataclass
class Probe:
    """What one session's transport saw that the SDK does not hand back."""

    label: str
    http_status: int | None = None
    stream_error: str | None = None
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES)
    )
    on_spawn: Callable[[], None] | None = None
    spawned: bool = False
    transport_error: Exception | None = None
    # Streamable HTTP: the server's session id and the protocol version the requests carry.
    session_id: str | None = None
    protocol_version: str | None = None
    # The session started an MCP task that later polls may follow from any process
    # (`ServerSession`): closing it must not end it at the server.
    keeps_tasks: bool = False
    # The transport speaks in a session opened elsewhere (`resumed_session`).
    resumed: bool = False

    async def on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, ValueError):
            # Only the type: the text of a parse error quotes the server's output.
            self.stream_error = type(message).__name__
        elif isinstance(message, Exception):
            self.transport_error = message

    async def on_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.http_status = response.status_code
        if session_id := response.headers.get(MCP_SESSION_ID):
            self.session_id = session_id
        if version := response.request.headers.get(MCP_PROTOCOL_VERSION_HEADER):
            self.protocol_version = version

    def server_session(self) -> ServerSession | None:
        """The streamable HTTP session this transport speaks in, once the server named it."""
        if self.session_id is None or self.protocol_version is None:
            return None
        return ServerSession(self.session_id, self.protocol_version)

    def record_auth_failure(self, error: WorkerError) -> None:
        """Keep why no OAuth token could be had mid-session: the error the session's calls report."""
        self.transport_error = error

    def mark_spawned(self) -> None:
        self.spawned = True
        if self.on_spawn is not None:
            self.on_spawn()

    def last_stderr(self) -> str | None:
        return next((line for line in reversed(self.stderr_tail) if line.strip()), None)


def stdio_environment(config: ServiceConfig) -> dict[str, str]:
    """Variables for a stdio child (on top of the SDK's safe defaults such as PATH and HOME)."""
    sending_key = config.auth_type != "none"
    env = {"MCP_SERVICE_ENDPOINT": config.endpoint or ""}
    if sending_key:
        env["MCP_SERVICE_API_KEY"] = config.api_key
    aliases = {"$api_key": config.api_key if sending_key else "", "$endpoint": config.endpoint or ""}
    for name, value in dict(config.auth.get("env") or {}).items():
        env[str(name)] = aliases.get(str(value), str(value))
    return env


def auth_headers(config: ServiceConfig) -> dict[str, str]:
    """`Authorization: Bearer <key>`, or the key in the header `auth.header` names; none for type
    none, and none for oauth (its token comes from `oauth_auth`, never the api key)."""
    if config.auth_type in ("none", "oauth") or not config.api_key:
        return {}
    header = str(config.auth.get("header") or "Authorization")
    if header.lower() == "authorization":
        return {"Authorization": f"Bearer {config.api_key}"}
    return {header: config.api_key}


async def oauth_auth(config: ServiceConfig, timeouts: Timeouts, probe: Probe) -> httpx2.Auth | None:
    """For an `oauth` service, the `httpx2.Auth` its requests go through, holding a token already.

    Raises:
        AuthenticationFailed, InvalidService: the client is refused or not configured.
        ServerUnavailable, ServerError: the authorization server could not be asked (transient).
    """
    if config.auth_type != "oauth":
        return None
    # Imported here: the token store needs the database, which the runtime loads only for OAuth.
    from worker.oauth.auth import OAuthBearer
    from worker.oauth.tokens import TokenSource

    source = TokenSource(oauth_client(config), timeouts.connect)
    await source.token()
    return OAuthBearer(source, probe.record_auth_failure)


def _http_timeout(timeouts: Timeouts, read: float) -> httpx2.Timeout:
    return httpx2.Timeout(timeouts.connect, read=read, write=timeouts.connect, pool=timeouts.connect)


async def _drain_stderr(fd: int, probe: Probe, done: anyio.Event) -> None:
    """Log a child's stderr at DEBUG under `worker.mcp.stderr` and keep its tail for error messages."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    pending = b""
    try:
        while chunk := await reader.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            pending = pending[-STDERR_LINE_MAX:]
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip()[:STDERR_LINE_MAX]
                probe.stderr_tail.append(line)
                stderr_logger.debug("[%s] %s", probe.label, line)
    finally:
        transport.close()
        done.set()


@asynccontextmanager
async def stdio_transport(
    config: ServiceConfig, settings: Settings, probe: Probe
) -> AsyncIterator[TransportStreams]:
    """Start the service's command as a child and talk MCP over its stdin/stdout."""
    argv = stdio_command(config, settings)
    params = StdioServerParameters(command=argv[0], args=list(argv[1:]), env=stdio_environment(config))
    read_fd, write_fd = os.pipe()
    errlog = os.fdopen(write_fd, "w")
    drained = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain_stderr, read_fd, probe, drained)
            try:
                async with stdio_client(params, errlog=errlog) as streams:
                    # The child holds its own copy; ours would keep the pipe open after it exits.
                    errlog.close()
                    probe.mark_spawned()
                    yield streams
            finally:
                errlog.close()
                with anyio.move_on_after(STDERR_DRAIN_TIMEOUT, shield=True):
                    await drained.wait()
                tg.cancel_scope.cancel()
    finally:
        errlog.close()


@functools.lru_cache(maxsize=2)
def _tls_context(pid: int) -> ssl.SSLContext:
    """httpx2's default TLS context (the system CA bundle, SSL_CERT_FILE/SSL_CERT_DIR honoured),
    built once per process (`pid`) and shared by its HTTP sessions: each build loads the whole CA
    bundle, ~30 ms and ~800 KiB that every session would otherwise repeat. It holds trust
    settings only; credentials stay in each session's own client."""
    return httpx2.create_ssl_context()


def _client_factory(probe: Probe, settings: Settings) -> Callable[..., httpx2.AsyncClient]:
    # One connection per call in flight (a streamable HTTP call is a POST whose response streams),
    # and the event stream: httpx's default of 100 would cap a session below the pool's limit.
    connections = settings.max_concurrency_per_service + 2
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)

    def factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers=headers,
            timeout=timeout,
            auth=auth,
            verify=_tls_context(os.getpid()),
            limits=limits,
            event_hooks={"response": [probe.on_response]},
        )

    return factory


@asynccontextmanager
async def sse_transport(
    config: ServiceConfig, settings: Settings, probe: Probe
) -> AsyncIterator[TransportStreams]:
    """Connect to a (legacy) HTTP+SSE server: a GET event stream plus POSTed messages."""
    timeouts = timeouts_for(config, settings)
    assert config.url is not None
    auth = await oauth_auth(config, timeouts, probe)
    async with sse_client(
        config.url,
        headers=auth_headers(config),
        auth=auth,
        timeout=timeouts.connect,
        sse_read_timeout=max(SSE_IDLE_READ_TIMEOUT, timeouts.call + HTTP_READ_SLACK),
        httpx_client_factory=_client_factory(probe, settings),
    ) as streams:
        yield streams


@asynccontextmanager
async def streamable_http_transport(
    config: ServiceConfig, settings: Settings, probe: Probe, resume: ServerSession | None = None
) -> AsyncIterator[TransportStreams]:
    """Connect to a streamable HTTP server with one `httpx2.AsyncClient` for the session's life;
    with `resume`, speak in that existing session (no handshake: see `resumed_session`).

    Closing ends the session at the server (`DELETE`) unless it was resumed or started an MCP
    task (`Probe.keeps_tasks`): the task's later polls, from any process, still need it.
    """
    timeouts = timeouts_for(config, settings)
    assert config.url is not None
    headers = auth_headers(config)
    if resume is not None:
        headers |= resume.headers()
    http = _client_factory(probe, settings)(
        headers=headers,
        timeout=_http_timeout(timeouts, timeouts.call + HTTP_READ_SLACK),
        auth=await oauth_auth(config, timeouts, probe),
    )
    async with http:
        max_event = max(MAX_SSE_EVENT_FLOOR, 2 * settings.max_result_bytes)
        try:
            async with streamable_http_client(
                config.url, http_client=http, max_sse_event_size=max_event, terminate_on_close=False
            ) as streams:
                yield streams
        finally:
            ended = probe.server_session()
            if resume is None and not probe.keeps_tasks and ended is not None:
                await end_session(http, config.url, ended, timeouts.connect, probe.label)


TransportFactory = Callable[[ServiceConfig, Settings, Probe], AbstractAsyncContextManager[TransportStreams]]
TRANSPORTS: dict[str, TransportFactory] = {
    "stdio": stdio_transport,
    "sse": sse_transport,
    "streamable_http": streamable_http_transport,
}


def target_of(config: ServiceConfig, settings: Settings) -> str:
    """What a session connects to: the URL, or the command line and the endpoint it is given."""
    if config.mode == "stdio":
        return _stdio_target(stdio_command(config, settings), config.endpoint)
    return config.url or ""


@functools.lru_cache(maxsize=1024)
def _stdio_target(argv: tuple[str, ...], endpoint: str | None) -> str:
    return shlex.join(argv) + f" @ {endpoint or ''}"


def open_client(
    config: ServiceConfig, settings: Settings, probe: Probe
) -> AbstractAsyncContextManager[ClientSession]:
    """Connect and handshake (on entering) with the service's server; yields the MCP session.

    Raises:
        CommandNotAllowed, InvalidService: a stdio command that may not or cannot run.
    """
    if config.mode == "stdio":
        stdio_command(config, settings)  # refuse before anything is spawned
    transport = TRANSPORTS[config.mode](config, settings, probe)
    client = Client(
        transport,
        read_timeout_seconds=timeouts_for(config, settings).call,
        client_info=CLIENT_INFO,
        message_handler=probe.on_message,
    )
    return _entered(client, probe)


# Each open session's probe, for the calls that need what it saw (`probe_of`).
_probes: weakref.WeakKeyDictionary[ClientSession, Probe] = weakref.WeakKeyDictionary()


def probe_of(session: ClientSession) -> Probe | None:
    """The probe of a session `open_client` or `resumed_session` opened."""
    return _probes.get(session)


@asynccontextmanager
async def _entered(client: Client, probe: Probe) -> AsyncIterator[ClientSession]:
    async with client:
        _probes[client.session] = probe
        yield client.session


@asynccontextmanager
async def resumed_session(
    config: ServiceConfig, settings: Settings, probe: Probe, resume: ServerSession
) -> AsyncIterator[ClientSession]:
    """Speak again in an existing streamable HTTP session, without a handshake: the server
    already knows it (its version is adopted as negotiated; its capabilities are not needed to
    poll a task). A server that forgot the session answers 404, like any ended session."""
    timeouts = timeouts_for(config, settings)
    probe.resumed = True
    async with streamable_http_transport(config, settings, probe, resume) as (read, write):
        session = ClientSession(
            read,
            write,
            read_timeout_seconds=timeouts.call,
            message_handler=probe.on_message,
            client_info=CLIENT_INFO,
        )
        async with session:
            session.adopt(
                InitializeResult(
                    protocol_version=resume.protocol_version,
                    capabilities=ServerCapabilities(),
                    server_info=Implementation(name="resumed session", version=""),
                )
            )
            _probes[session] = probe
            yield session
