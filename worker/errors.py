"""The worker's exceptions: one root, a retryable branch and a permanent branch.

    WorkerError
    ├── ConfigurationError          settings or a config file that do not parse
    ├── TransientError              worth retrying: the same call may succeed later
    │   ├── ServerUnavailable       connection refused/reset, DNS, a dead stdio child
    │   ├── ServerTimeout           connect or call took longer than its limit
    │   ├── ServerError             HTTP 5xx or an internal error reported by the server
    │   └── ExecutionHeld           another delivery holds the task's row longer than this one can wait
    │       └── TaskPending         the call runs as an MCP task on the server: poll it again later
    └── PermanentError              retrying cannot help; the row says what to fix
        ├── ServiceNotFound         no service of that name for the user (nor a global one)
        ├── InvalidService          a service record that cannot be used as written
        ├── InvalidArguments        task arguments of the wrong shape, size or type
        ├── CommandNotAllowed       a stdio command the operator did not allow
        ├── AuthenticationFailed    the MCP server refused the credentials (or OAuth refused the client)
        ├── UnknownTool             the server has no tool of that name
        ├── ToolInputRejected       the tool's input schema rejected the arguments
        ├── ToolFailed              the tool ran and reported `isError`
        ├── CallCancelled           an operator cancelled the call (never retried)
        ├── ProtocolError           the server answered something that is not MCP
        ├── TemplateError           a report template failed to compile or render
        └── TemplateNotFound        no template of that name in the database or the package

Messages are one line, say what to fix, and never contain a credential: every place that builds
one from server output runs it through `worker.redaction.redact` first.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""

    retryable: bool = False


class ConfigurationError(WorkerError):
    """A setting, environment variable or config file does not parse."""


class TransientError(WorkerError):
    """A failure that may go away: the task is retried with backoff."""

    retryable = True


class ServerUnavailable(TransientError):
    """The MCP server could not be reached or its process died."""


class ServerTimeout(TransientError):
    """Connecting to or calling the MCP server took longer than its limit."""


class ServerError(TransientError):
    """The MCP server answered with a 5xx or an internal error."""


class ExecutionHeld(TransientError):
    """Another delivery of the task holds its row longer than this delivery can wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        # args stay (message, retry_after) so Celery (and pickle) can rebuild it by its class.
        super().__init__(message, retry_after)
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class TaskPending(ExecutionHeld):
    """The call runs as an MCP task on the server; the next delivery polls it (no slot held)."""


class PermanentError(WorkerError):
    """A failure that retrying cannot fix: the task fails at once."""


class ServiceNotFound(PermanentError):
    """Neither the user nor `global` has a service of that name."""

    def __init__(self, user_id: str, desc: str) -> None:
        # args stay (user_id, desc) so Celery (and pickle) can rebuild the exception by its class.
        super().__init__(user_id, desc)
        self.user_id = user_id
        self.desc = desc

    def __str__(self) -> str:
        return f"no MCP service {self.desc!r} for user {self.user_id!r} (nor a global one)"


class InvalidService(PermanentError):
    """A service record cannot be used as written (mode, URL, auth, command)."""


class InvalidArguments(PermanentError):
    """Task arguments are of the wrong shape, size or type."""


class CommandNotAllowed(PermanentError):
    """A stdio service names an executable outside MCP_STDIO_ALLOWED_COMMANDS."""


class AuthenticationFailed(PermanentError):
    """The MCP server refused the service's credentials (401/403), or the OAuth authorization
    server refused the service's client (invalid_client, ...)."""


class UnknownTool(PermanentError):
    """The MCP server has no tool of that name."""


class ToolInputRejected(PermanentError):
    """The tool's input schema (or the server's validation) rejected the arguments."""


class ToolFailed(PermanentError):
    """The tool ran and returned a result flagged `isError`."""


class CallCancelled(PermanentError):
    """An operator cancelled the call (`mcp-worker executions cancel`, a Celery revoke)."""


class ProtocolError(PermanentError):
    """The server answered with something that is not a valid MCP message."""


class SessionGone(PermanentError):
    """The server no longer knows a streamable HTTP session the worker spoke in again (the one an
    MCP task was started in): it restarted, or expired the session."""


class TemplateError(PermanentError):
    """A report template failed to compile or render."""


class TemplateNotFound(PermanentError):
    """No template of that name in `mcp_templates` nor bundled in the package."""
