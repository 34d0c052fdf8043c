"""Cancelling a running tool call, from outside the process that runs it.

Two signals reach a running call, both checked by its waiting thread every
`worker.execution.call.WATCH_INTERVAL_S` (`worker.mcp.loop.run_sync`'s tick):

- Celery's revoke (Flower, `celery control revoke`): every worker adds the id to its in-memory
  revoked set (`celery.worker.state.revoked`). On the production threads pool `terminate=True`
  cannot stop a thread, so the running call looks at that set itself.
- `mcp-worker executions cancel TASK_ID`: a key on the broker's Redis, `mcp:cancel:<task id>`,
  seen by whichever worker process runs the call, on any host, and by a later delivery of the
  task (a retry waiting for its countdown) when it starts. It also revokes the task.

The call is then cancelled on the loop, so the SDK sends the server `notifications/cancelled`,
and the row ends `cancelled` (`worker.execution.pauses.cancel`); the task is not retried.

A row no call runs now (a retry waiting for its countdown, a server's MCP task between two polls,
`input_required`) is ended by `end_idle`: by the CLI at once, and by the worker when a revoked
delivery of the task comes due (`task_revoked`); a server's task is cancelled at the server too.
"""

from __future__ import annotations

import logging

import redis
from celery.worker import state as worker_state

from worker import mcp
from worker.db.engine import autocommit, session_scope
from worker.errors import WorkerError
from worker.execution import audit, pauses, pending, slots
from worker.settings import Settings

logger = logging.getLogger(__name__)

PREFIX = "mcp:cancel:"
# A cancellation outlives any retry of its task (the backoff cap plus the lease), then expires.
KEY_TTL_S = 24 * 3600


def key_of(task_id: str) -> str:
    return f"{PREFIX}{task_id}"


def request(task_id: str, settings: Settings) -> bool:
    """Ask every worker to stop `task_id`'s call; returns whether the Redis key could be set
    (False with a broker that is not Redis: then only the revoke reaches the workers).

    Raises:
        redis.RedisError: the broker's Redis could not be reached.
    """
    found = slots.slots_for(settings)
    if found is None:
        return False
    found.client.set(key_of(task_id), "1", ex=KEY_TTL_S)
    return True


def requested(task_id: str, settings: Settings) -> bool:
    """Whether `task_id` was revoked (this worker's revoked set) or cancelled (the Redis key).

    A Redis that cannot be reached counts as "not cancelled": the call goes on, and the next
    look tries again.
    """
    if task_id in worker_state.revoked:
        return True
    found = slots.slots_for(settings)
    if found is None:
        return False
    try:
        return bool(found.client.exists(key_of(task_id)))
    except redis.RedisError as exc:
        logger.warning("could not look for a cancellation of task %s: %s", task_id, exc)
        return False


def end_idle(task_id: str, message: str) -> tuple[bool, str | None]:
    """End the row of `task_id` as `cancelled` when no call runs it now, and cancel the server's
    task of a call that ran as one. Returns whether the row was ended, and what the server said
    of its task (or why it could not be told; None without a server task).

    Raises:
        DBAPIError: the database could not be reached.
    """
    from worker.services import registry  # the database's service store, loaded only here

    if not autocommit(lambda connection: pauses.cancel(connection, task_id, message=message)):
        return False, None
    with session_scope() as session:
        row = audit.get(session, task_id)
        if row is None or row.server_task_id is None:
            return True, None
        user, desc, server_task = row.user_id, row.tool_desc, row.server_task_id
    try:
        config = registry.resolve(user, desc)
        status = mcp.cancel_task(config, server_task, session=pending.server_session(task_id))
    except WorkerError as exc:
        return True, f"not told: {type(exc).__name__}: {exc}"
    logger.info("task %s: the server's task %s is %s", task_id, server_task, status)
    return True, status
