"""Polish a rendered report with OpenAI, keeping the raw render whenever anything goes wrong.

Refinement is optional and never fails a report: a missing key, an HTTP error, a timeout, an
answer that is empty, cut off, or has lost a count from the raw render all give back the raw text
with a one-line reason in `RefineOutcome.error`. Reasons never contain the API key.

Facts measured with openai 3.54 against `tests/fakes/openai_server.py`:
HTTP 5xx -> `InternalServerError` after `max_retries` retries (honouring `retry-after-ms`);
401 -> `AuthenticationError` (not retried); 429 -> `RateLimitError` (retried); no answer within
`timeout` -> `APITimeoutError` ("Request timed out.", cause `ReadTimeout`); connection refused ->
`APIConnectionError` ("Connection error.", cause `ConnectError`). All are `openai.OpenAIError`.
A 200 whose body is not JSON raises a bare `json.JSONDecodeError`, and a 200 with JSON of the
wrong shape is returned unvalidated (`choices` may be None, `content` may be None), so the answer
is read defensively.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from worker.redaction import redact, register_secrets
from worker.settings import Settings

if TYPE_CHECKING:
    import openai  # imported when a report is first refined: ~36 MiB a tools worker never needs

logger = logging.getLogger(__name__)

# ~15k tokens: longer reports cost more than polishing is worth, and risk the model's output limit.
MAX_REFINE_CHARS = 60_000
# Reasons are stored in a column and shown in Flower; one short line is enough.
_MAX_ERROR_CHARS = 300
# Anything that looks like a key or a bearer token is masked in reasons, whoever echoed it.
_SECRETISH = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_*\-]{3,}|Bearer\s+\S+", re.IGNORECASE)
_ZERO_WORDS = re.compile(r"\b(?:zero|none)\b", re.IGNORECASE)

SYSTEM_PROMPT = (
    "You edit weekly project status reports written in Markdown. Polish the wording so the report "
    "reads clearly for a manager. Keep every number, count, name, date and status exactly as written, "
    "with numbers as digits. Keep the headings and lists, do not add or remove facts, and answer "
    "with the report only."
)


@dataclass(frozen=True)
class RefineOutcome:
    """The report text to store and how refinement went."""

    text: str
    refined: bool
    model: str | None
    error: str | None
    usage: dict[str, int] | None


_ClientKey = tuple[int, str, str | None, float, int]
_clients: dict[_ClientKey, openai.OpenAI] = {}
_inherited: list[openai.OpenAI] = []  # a parent's clients: their sockets are not ours to close
_lock = threading.Lock()


def _forget_parent_clients() -> None:
    global _lock
    _lock = threading.Lock()  # the parent may have forked while holding it
    _inherited.extend(_clients.values())
    _clients.clear()


os.register_at_fork(after_in_child=_forget_parent_clients)


def _client(settings: Settings, api_key: str) -> openai.OpenAI:
    """The process's client for these settings, created on first use and then reused."""
    key: _ClientKey = (
        os.getpid(),
        api_key,
        settings.openai_base_url,
        settings.openai_timeout,
        settings.openai_max_retries,
    )
    with _lock:
        client = _clients.get(key)
        if client is None:
            import openai

            register_secrets([api_key])  # so the log filter masks it too, wherever it turns up
            client = openai.OpenAI(
                api_key=api_key,
                base_url=settings.openai_base_url,
                timeout=settings.openai_timeout,
                max_retries=settings.openai_max_retries,
            )
            _clients[key] = client
        return client


def close_clients() -> None:
    """Close this process's OpenAI clients (worker shutdown, tests)."""
    with _lock:
        clients = [client for key, client in _clients.items() if key[0] == os.getpid()]
        _clients.clear()
    for client in clients:
        client.close()


def required_facts(raw: str, context: Mapping[str, Any]) -> list[str]:
    """The work-package counts a refined report must keep: those of `context` shown in `raw`.

    The counts are the total, each status's count, and the overdue and unassigned counts; a count
    is required only if the raw render prints it as a whole number.
    """
    counts: list[Any] = [context.get("total")]
    totals = context.get("totals_by_status")
    if isinstance(totals, Mapping):
        counts.extend(totals.values())
    for name in ("overdue", "unassigned"):
        value = context.get(name)
        counts.append(len(value) if isinstance(value, Sequence) and not isinstance(value, str) else value)
    facts: list[str] = []
    for count in counts:
        if isinstance(count, int) and not isinstance(count, bool):
            fact = str(count)
            if fact not in facts and _has_number(raw, fact):
                facts.append(fact)
    return facts


def refine_report(raw: str, *, settings: Settings, facts: Sequence[str] | None = None) -> RefineOutcome:
    """Ask OpenAI to polish `raw`; keep `raw` if refinement is off, fails, or drops a fact.

    `facts` are strings the answer must still contain (numbers as whole numbers, see
    `required_facts`); None checks none.

    Raises:
        Nothing for a refinement failure (HTTP error, timeout, connection error, bad answer):
        the raw render is returned with the reason in `RefineOutcome.error`.
    """
    api_key = settings.openai_api_key
    if not api_key:
        return RefineOutcome(raw, False, None, "refinement skipped: OPENAI_API_KEY is not set", None)
    if len(raw) > MAX_REFINE_CHARS:
        skipped = f"refinement skipped: the report is {len(raw)} characters, over {MAX_REFINE_CHARS}"
        return RefineOutcome(raw, False, None, skipped, None)

    import openai

    model = settings.openai_model
    try:
        completion: Any = _client(settings, api_key).chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": raw}],
        )
    except (openai.OpenAIError, ValueError) as exc:  # ValueError: a 200 whose body is not JSON
        failure = _sanitize(f"refinement failed: {_describe_failure(exc, settings)}", settings)
        logger.warning("report refinement failed, keeping the raw render: %s", failure)
        return RefineOutcome(raw, False, model, failure, None)

    model = getattr(completion, "model", None) or model
    usage = _usage(completion)
    text, finish_reason = _answer(completion)
    reason: str | None = None
    if not text:
        reason = f"refinement failed: the model returned no text (finish_reason={finish_reason})"
    elif finish_reason in ("length", "content_filter"):
        reason = f"refinement failed: the answer was cut off (finish_reason={finish_reason})"
    else:
        dropped = [fact for fact in facts or () if not _keeps(text, fact)]
        if dropped:
            reason = f"refinement dropped counts from the report: {', '.join(dropped)}"
    if reason is not None:
        reason = _sanitize(reason, settings)
        logger.warning("report refinement rejected, keeping the raw render: %s", reason)
        return RefineOutcome(raw, False, model, reason, usage)
    return RefineOutcome(text, True, model, None, usage)


def _describe_failure(exc: Exception, settings: Settings) -> str:
    import openai

    retries = settings.openai_max_retries
    if isinstance(exc, openai.APITimeoutError):
        return f"OpenAI did not answer within {settings.openai_timeout:g} s ({retries} retries)"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f": {type(cause).__name__}: {cause}" if cause else ""
        return f"could not connect to {_origin(settings.openai_base_url)}{detail}"
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, Mapping) else {}
        message = body.get("message") if isinstance(body.get("message"), str) else exc.message
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return f"OpenAI refused the API key (HTTP {exc.status_code}): {message}"
        after = f" after {retries} retries" if exc.status_code >= 500 or exc.status_code == 429 else ""
        return f"OpenAI answered HTTP {exc.status_code}{after}: {message}"
    if isinstance(exc, ValueError):
        return f"OpenAI's answer is not a chat completion ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _answer(completion: Any) -> tuple[str, str | None]:
    # The client does not validate 200 responses: any level of this may be missing or None.
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        return "", None
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    finish_reason = getattr(choices[0], "finish_reason", None)
    return (_strip_fence(content) if isinstance(content, str) else ""), finish_reason


def _strip_fence(text: str) -> str:
    # Models like to wrap Markdown in ```markdown fences; the report itself is the content.
    stripped = text.strip()
    lines = stripped.splitlines()
    if len(lines) >= 2 and lines[0].startswith("```") and lines[-1].strip() == "```":
        return "\n".join(lines[1:-1]).strip()
    return stripped


def _usage(completion: Any) -> dict[str, int] | None:
    usage = getattr(completion, "usage", None)
    if usage is None:
        return None
    names = ("prompt_tokens", "completion_tokens", "total_tokens")
    values = {name: getattr(usage, name, None) for name in names}
    return {name: value for name, value in values.items() if isinstance(value, int)} or None


def _has_number(text: str, number: str) -> bool:
    return re.search(rf"(?<!\d){re.escape(number)}(?!\d)", text) is not None


def _keeps(text: str, fact: str) -> bool:
    if not fact.isdigit():
        return fact in text
    if _has_number(text, fact):
        return True
    # "none overdue" loses the digit but not the fact: accept the words for zero
    return int(fact) == 0 and _ZERO_WORDS.search(text) is not None


def _origin(url: str | None) -> str:
    if not url:
        return "the OpenAI API"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def _sanitize(text: str, settings: Settings) -> str:
    text = redact(text, [settings.openai_api_key] if settings.openai_api_key else [])
    text = " ".join(_SECRETISH.sub("***", text).split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
