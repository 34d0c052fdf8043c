"""Streamable HTTP sessions at the server that outlive the connection that opened them.

A server may keep a call's MCP task only in the session that started it (server-everything
does). So a session that started a task is not ended when the worker closes its connection, and
its id travels with the task (on the execution row): a poll from another process, or after a
worker restart, speaks in that session again (`worker.mcp.transports.resumed_session`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp.client.streamable_http import MCP_SESSION_ID
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSession:
    """A streamable HTTP session at the server: its id and the protocol version it speaks."""

    id: str
    protocol_version: str

    def headers(self) -> dict[str, str]:
        """What a request sent in this session carries."""
        return {MCP_SESSION_ID: self.id, MCP_PROTOCOL_VERSION_HEADER: self.protocol_version}

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "protocol_version": self.protocol_version}

    @classmethod
    def from_json(cls, raw: Any) -> ServerSession | None:
        if not isinstance(raw, dict) or not raw.get("id") or not raw.get("protocol_version"):
            return None
        return cls(str(raw["id"]), str(raw["protocol_version"]))


async def end_session(
    http: httpx2.AsyncClient, url: str, session: ServerSession, timeout: float, label: str
) -> None:
    """Tell the server `session` is over (`DELETE`, as the SDK's `terminate_on_close` does, which
    the worker cannot make conditional); a server that cannot be told forgets it on its own."""
    with anyio.move_on_after(timeout, shield=True):
        try:
            await http.delete(url, headers=session.headers())
        except httpx2.HTTPError as exc:
            logger.debug("%s: ending the session failed: %s", label, exc)
