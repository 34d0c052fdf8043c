"""The requests of one tool call on an open session: `tools/call` (with no outputSchema check of
the SDK's: the worker records a mismatch instead of losing the result), the outputSchema check,
MCP tasks (2025-11-25: `tools/call` with `task`, `tasks/get`, `tasks/result`) and input requests
(2026-07-28 `InputRequiredResult`). `worker.mcp` runs them through the pool.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types import HEADER_MISMATCH, PaginatedRequestParams
from pydantic import TypeAdapter, ValidationError

from worker.errors import InvalidArguments
from worker.mcp.http_sessions import ServerSession
from worker.mcp.outcome import ToolOutcome
from worker.mcp.transports import probe_of

logger = logging.getLogger(__name__)

# A server that pages its tool list forever cannot hang the tasks lookup.
LIST_TOOLS_PAGE_CAP = 100

# How long the server should keep a task the worker started (ms): past any poll delay.
TASK_TTL_MS = 3_600_000
# When the server suggests no poll interval, and the bounds put on the one it suggests (s).
TASK_POLL_DEFAULT_S = 2.0
TASK_POLL_MIN_S = 0.5
TASK_POLL_MAX_S = 60.0
TASK_DONE = frozenset({"completed", "failed", "cancelled"})


# A task's cancellation sent on the way out of a call that was itself cancelled or timed out.
TASK_CANCEL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class TaskStarted:
    """The server took the call as an MCP task: poll it (`poll_task`) after `poll_after` seconds,
    in `session` when the server named one (its tasks may live only there)."""

    task_id: str
    status: str
    poll_after: float
    session: ServerSession | None = None


@dataclass(frozen=True)
class InputNeeded:
    """The server needs input before the call can complete (2026-07-28 `InputRequiredResult`):
    its requests (JSON, keyed by the server) and the opaque state to send back with the answers."""

    requests: dict[str, Any]
    request_state: str | None


# What a tools/call may answer on a 2026-07-28 session, and what answers to input requests are.
_CALL_RESULT: TypeAdapter[types.CallToolResult | types.InputRequiredResult] = TypeAdapter(
    types.CallToolResult | types.InputRequiredResult
)
_INPUT_RESPONSES: TypeAdapter[types.InputResponses] = TypeAdapter(types.InputResponses)


def input_responses(raw: Any) -> types.InputResponses:
    """`raw` (JSON: request key -> answer, e.g. `{"confirm": {"action": "accept", "content":
    {...}}}`) as the SDK's input responses.

    Raises:
        InvalidArguments: `raw` is not such an object.
    """
    try:
        return _INPUT_RESPONSES.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the object"
        raise InvalidArguments(f"the input responses do not parse at {where}: {first['msg']}") from None


@dataclass(frozen=True)
class TaskPoll:
    """What `tasks/get` said: the task's status and, once it is `completed` or `failed`, the call's
    outcome (from `tasks/result`)."""

    status: str
    message: str | None
    poll_after: float
    outcome: ToolOutcome | None = None


def poll_after(task: types.Task) -> float:
    if task.poll_interval is None:
        return TASK_POLL_DEFAULT_S
    return min(max(task.poll_interval / 1000, TASK_POLL_MIN_S), TASK_POLL_MAX_S)


# Per session: how each tool may run as a task ("forbidden", "optional", "required").
_task_support: weakref.WeakKeyDictionary[ClientSession, dict[str, str]] = weakref.WeakKeyDictionary()


async def runs_as_task(session: ClientSession, tool: str) -> bool:
    """Whether the server takes `tool` as an MCP task (2025-11-25 tasks): it says so in its
    capabilities and in the tool's `execution.taskSupport`. Servers without tasks cost nothing."""
    caps = session.server_capabilities
    tasks = caps.tasks if caps is not None else None
    if (
        tasks is None
        or tasks.requests is None
        or tasks.requests.tools is None
        or tasks.requests.tools.call is None
    ):
        return False
    support = _task_support.get(session)
    if support is None:
        support = {}
        cursor: str | None = None
        for _ in range(LIST_TOOLS_PAGE_CAP):
            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor))
            for listed in page.tools:
                support[listed.name] = (
                    listed.execution.task_support if listed.execution else None
                ) or "forbidden"
            cursor = page.next_cursor
            if cursor is None:
                break
        _task_support[session] = support
    return support.get(tool, "forbidden") in ("optional", "required")


async def start_task(
    session: ClientSession, tool: str, arguments: dict[str, Any], timeout: float
) -> TaskStarted:
    """Start the call as a task. The session it was started in is kept open at the server from
    then on (`Probe.keeps_tasks`): its polls may come from any process, after any restart."""
    params = types.CallToolRequestParams(
        name=tool, arguments=arguments, task=types.TaskMetadata(ttl=TASK_TTL_MS)
    )
    probe = probe_of(session)
    if probe is not None:
        probe.keeps_tasks = True
    # The SDK checks every tools/call answer against CallToolResult, which a task-augmented call
    # does not return (the SDK ships the task types only): this one request goes out raw.
    raw = await session._dispatcher.send_raw_request(
        "tools/call", params.model_dump(by_alias=True, mode="json", exclude_none=True), {"timeout": timeout}
    )
    created = types.CreateTaskResult.model_validate(raw)
    where = probe.server_session() if probe is not None else None
    return TaskStarted(created.task.task_id, created.task.status, poll_after(created.task), where)


async def get_task(session: ClientSession, task_id: str, timeout: float) -> types.GetTaskResult:
    return await session.send_request(
        types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id)),
        types.GetTaskResult,
        request_read_timeout_seconds=timeout,
    )


async def task_result(session: ClientSession, task_id: str, timeout: float) -> types.CallToolResult:
    return await session.send_request(
        types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id)),
        types.CallToolResult,
        request_read_timeout_seconds=timeout,
    )


async def cancel_task(session: ClientSession, task_id: str, timeout: float) -> str:
    cancelled = await session.send_request(
        types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task_id)),
        types.CancelTaskResult,
        request_read_timeout_seconds=timeout,
    )
    return cancelled.status


async def follow_task(session: ClientSession, started: TaskStarted, timeout: float) -> types.GetTaskResult:
    """Poll a task on the connection that started it, until it ends or `timeout` runs out: over
    stdio and SSE a server's tasks live in that connection, which no other process can reach.
    A call cancelled or timed out on the way cancels the server's task too (best effort).

    Raises:
        TimeoutError: the task did not end in `timeout`.
    """
    try:
        with anyio.fail_after(timeout):
            await anyio.sleep(started.poll_after)
            while (got := await get_task(session, started.task_id, timeout)).status not in TASK_DONE:
                if got.status == "input_required":
                    return got
                await anyio.sleep(poll_after(got))
            return got
    except BaseException:
        with anyio.move_on_after(TASK_CANCEL_TIMEOUT_S, shield=True):
            try:
                await cancel_task(session, started.task_id, TASK_CANCEL_TIMEOUT_S)
            except Exception as exc:  # the call's own failure is what the caller reports
                logger.info("could not cancel the server's task %s: %s", started.task_id, type(exc).__name__)
        raise


async def send_call(
    session: ClientSession,
    tool: str,
    arguments: dict[str, Any],
    timeout: float,
    on_progress: Any,
    answers: types.InputResponses | None = None,
    request_state: str | None = None,
) -> types.CallToolResult | types.InputRequiredResult:
    """`tools/call`, without the SDK's own outputSchema check (which raises and loses the result:
    the worker keeps it and records the mismatch instead) nor its input-request driver (the
    worker has nobody to ask: the request goes to the row, `mcp-worker executions respond`)."""
    params = types.CallToolRequestParams(
        name=tool, arguments=arguments, input_responses=answers, request_state=request_state
    )
    request = types.CallToolRequest(params=params)

    async def send() -> types.CallToolResult | types.InputRequiredResult:
        return await session.send_request(
            request, _CALL_RESULT, request_read_timeout_seconds=timeout, progress_callback=on_progress
        )

    try:
        return await send()
    except MCPError as exc:
        if exc.code != HEADER_MISMATCH:
            raise
        # As `Client.call_tool` does: the listed schema was stale, so re-list and resend once.
        await session.list_tools()
        return await send()


async def check_output(
    session: ClientSession, tool: str, result: types.CallToolResult
) -> tuple[bool | None, str | None]:
    """(matched, why not) of the result against the tool's outputSchema; (None, None) without one."""
    if result.is_error:
        return None, None
    try:
        await session.validate_tool_result(tool, result)
    except RuntimeError as exc:
        cause = exc.__cause__
        detail = getattr(cause, "message", None)
        where = getattr(cause, "json_path", None)
        return False, f"{detail} (at {where})" if detail and where else str(exc)
    # The session keeps every listed tool's schema but has no public way to read it back.
    schemas: dict[str, Any] = getattr(session, "_tool_output_schemas", {})
    return (True, None) if schemas.get(tool) is not None else (None, None)
