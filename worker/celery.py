"""The Celery application. Nothing but its construction lives here: `celery -A worker worker`."""

from __future__ import annotations

from celery import Celery

from worker import broker

# Redis URLs get the transport whose take cannot lose a message to a killed worker.
broker.install()

app = Celery("worker")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
