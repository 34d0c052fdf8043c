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
and the row ends `cancelled` (`worker.execution.audit.cancel`); the task is not retried.
"""

from __future__ import annotations

import logging

import redis
from celery.worker import state as worker_state

from worker.execution import slots
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
