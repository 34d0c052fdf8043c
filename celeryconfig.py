"""Celery configuration for mcp-worker, built from `worker.settings` (the environment).

The reliability defaults of DESIGN.md live here: late acks with reject-on-worker-lost so a killed
worker's task is redelivered, a short visibility timeout that live workers keep refreshing
(`worker.broker`), prefetch 1, JSON only, and result expiry. Each value that differs from Celery's default says why.
"""

from __future__ import annotations

from celery.schedules import crontab
from kombu import Exchange, Queue

from worker import names
from worker.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
result_backend = _settings.result_backend
broker_connection_retry_on_startup = True

if _settings.broker_is_embedded:
    _broker = _settings.data_dir / "broker"
    # The file transport and the file result backend need their folders to exist.
    for _folder in ("out", "control", "processed"):
        (_broker / _folder).mkdir(parents=True, exist_ok=True)
    (_settings.data_dir / "results").mkdir(parents=True, exist_ok=True)
    broker_transport_options = {
        "data_folder_in": str(_broker / "out"),
        "data_folder_out": str(_broker / "out"),
        "control_folder": str(_broker / "control"),
        "processed_folder": str(_broker / "processed"),
        "store_processed": False,
    }
else:
    broker_transport_options = {
        # How long the messages of a dead (or stopped) worker wait before they are restored: a
        # live worker refreshes its messages four times per timeout (`worker.broker`), so a task
        # may run longer than this without being handed to a second worker.
        "visibility_timeout": _settings.visibility_timeout,
        # How often each worker sweeps for such messages (every interval x throttle seconds).
        "unacked_restore_interval": _settings.unacked_restore_interval,
        "unacked_restore_throttle": _settings.unacked_restore_throttle,
    }
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}

# JSON only: payloads are plain data, and pickle from a broker is remote code execution.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
result_expires = _settings.result_expires

# A task is acknowledged after it finishes; a worker killed mid-task gets it redelivered.
task_acks_late = True
task_reject_on_worker_lost = True
# One message at a time per process: calls can be slow, and a prefetched message would wait behind one.
worker_prefetch_multiplier = 1
worker_hijack_root_logger = False
# Keep running tasks when the broker connection drops: cancelling them would need the result
# backend (often the same Redis, down too) and loses the message; late acks redeliver instead.
worker_cancel_long_running_tasks_on_connection_loss = False
# No STARTED state in the result backend for tool calls (Celery's default): each result write
# costs two Redis round trips (Celery reads the key before every write), and a call's running
# state is already in its row (`status = running`) and in Flower's task events. Reports, which
# run for seconds, do store it (`track_started` on `mcp.generate_report`).
task_track_started = False
task_time_limit = _settings.task_time_limit
task_soft_time_limit = _settings.task_soft_time_limit

# Flower lists queued and running tasks only when workers and producers send events.
worker_send_task_events = True
task_send_sent_event = True

task_default_queue = names.TOOLS_QUEUE
task_queues = tuple(
    Queue(queue, Exchange(queue), routing_key=queue)
    for queue in (names.TOOLS_QUEUE, names.REPORTS_QUEUE, names.SCHEDULE_QUEUE)
)
task_routes = {
    **{task: {"queue": queue, "routing_key": queue} for task, queue in names.QUEUE_OF.items()},
    "mcp.*": {"queue": names.SCHEDULE_QUEUE, "routing_key": names.SCHEDULE_QUEUE},
}

beat_schedule: dict[str, dict[str, object]] = {
    "dispatch-due-reports": {
        "task": names.DISPATCH_DUE_REPORTS,
        "schedule": crontab(minute="*"),
        # A tick older than a minute is stale: the next one does its work.
        "options": {"queue": names.SCHEDULE_QUEUE, "expires": 55},
    },
    "reap-stuck-executions": {
        "task": names.REAP_STUCK_EXECUTIONS,
        "schedule": crontab(minute="*/5"),
        "options": {"queue": names.SCHEDULE_QUEUE, "expires": 240},
    },
    "prune-old-records": {
        "task": names.PRUNE_OLD_RECORDS,
        "schedule": crontab(hour=3, minute=17),
        "options": {"queue": names.SCHEDULE_QUEUE, "expires": 3600},
    },
}
beat_schedule_filename = str(_settings.data_dir / "celerybeat-schedule")
timezone = "UTC"
enable_utc = True
