"""Keeping secrets out of rows, results, errors and logs.

Two rules, applied by code rather than by remembering: values under secret-looking keys are
masked wherever a structure is stored or printed (`redact_params`), and every known secret value
(the resolved service's api key and auth values, registered with `register_secrets`) is replaced
in any text that leaves the worker (`redact`). The logging filter in `worker.ops.logs` applies `redact`
to every log line.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
# Shorter strings are too likely to occur by chance in ordinary text to be replaced safely.
MIN_SECRET_LEN = 4
_SECRET_KEY = re.compile(
    r"(api[_-]?key|token|secret|password|passwd|authorization|auth[_-]?value|credential|private[_-]?key)",
    re.I,
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{4,}")

# The log filter masks the secrets of the most recent services a process called. Bounded, so a
# long-lived worker serving many users does not keep every credential it ever saw (nor pay for
# them on every log line); a secret is refreshed each time its service is called, so only the
# credentials of services idle through this many others are forgotten. A call's own results
# and errors are redacted with its secrets passed explicitly, whatever this set holds.
MAX_KNOWN_SECRETS = 512

_lock = threading.Lock()
_known: OrderedDict[str, None] = OrderedDict()
_ordered: tuple[str, ...] = ()


def register_secrets(secrets: Iterable[str]) -> None:
    """Remember secret values so `redact` (and the log filter) masks them from now on, keeping
    at most `MAX_KNOWN_SECRETS` (the least recently registered go first)."""
    global _ordered
    fresh = [s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LEN]
    if not fresh:
        return
    with _lock:
        added = False
        for secret in fresh:
            if secret in _known:
                _known.move_to_end(secret)
            else:
                _known[secret] = None
                added = True
        if not added:
            return
        while len(_known) > MAX_KNOWN_SECRETS:
            _known.popitem(last=False)
        # Longest first, so a secret that contains another is masked whole; sorted once here
        # rather than on every redact() (every log line and every result string).
        _ordered = tuple(sorted(_known, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret (and `secrets`) and any bearer token replaced by a mask."""
    extra = [s for s in secrets if s and len(s) >= MIN_SECRET_LEN and s not in _known]
    values = sorted([*_ordered, *extra], key=len, reverse=True) if extra else _ordered
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact_params(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like structure with secret-looking keys masked and secret values replaced
    (in keys too: a server may echo a credential as a key)."""
    secrets = tuple(secrets)
    if isinstance(value, Mapping):
        return {
            (redact(k, secrets) if isinstance(k, str) else k): (
                MASK
                if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                else redact_params(v, secrets)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_params(v, secrets) for v in value]
    if isinstance(value, str):
        return redact(value, secrets)
    return value
