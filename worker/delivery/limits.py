"""How long one delivery may take: the task's time limits and its claim's lease. Apart from
`worker.delivery.job` so that registering the task (every worker does) loads nothing else."""

from __future__ import annotations

from worker.settings import Settings


def time_limit(settings: Settings) -> int:
    """The task's soft time limit: a slow SMTP conversation is a few timeouts long."""
    return int(4 * max(settings.smtp_timeout, settings.webhook_timeout) + 30)


def lease_seconds(settings: Settings) -> float:
    # past the task's hard limit (soft + 30 s), so a live sender never loses its claim
    return float(time_limit(settings) + 60)
