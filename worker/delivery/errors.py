"""How a delivery fails: on the worker's two branches (`worker.errors`).

TransientError
└── DeliveryUnavailable     connection refused, timeout, 5xx, 429, SMTP 4xx: retried with backoff
PermanentError
└── DeliveryRefused         4xx, a refused recipient or sender, a bad channel: failed at once
"""

from __future__ import annotations

from worker.errors import PermanentError, TransientError


class DeliveryUnavailable(TransientError):
    """The receiver could not take the report now; `retry_after` (seconds) when it said when."""

    def __init__(self, message: str, retry_after: float | None = None, code: int | None = None) -> None:
        super().__init__(message, retry_after, code)
        self.message = message
        self.retry_after = retry_after
        self.code = code

    def __str__(self) -> str:
        return self.message


class DeliveryRefused(PermanentError):
    """The receiver refused the report (or the channel cannot work as configured)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message, code)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message
