"""Refinement through the real openai client against the fake OpenAI server."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fakes.openai_server import FakeOpenAI

from worker.reports import bundled_template, refine_report, render_template, required_facts
from worker.reports import refine as refine_module
from worker.settings import Settings

from .conftest import API_KEY

MakeSettings = Callable[..., Settings]


def raw_report(context: dict[str, Any]) -> str:
    source = bundled_template("executive_summary.j2")
    assert source is not None
    return render_template("executive_summary.j2", source, context).text


def test_required_facts_are_the_counts_shown(context: dict[str, Any]) -> None:
    raw = raw_report(context)
    assert required_facts(raw, context) == ["7", "3", "2", "1"]
    assert required_facts("Nothing but words.", context) == []
    assert required_facts("7 items", {"total": 7, "overdue": "odd", "totals_by_status": None}) == ["7"]


def test_accepted_refinement(
    fake_openai: FakeOpenAI, openai_settings: MakeSettings, context: dict[str, Any]
) -> None:
    raw = raw_report(context)
    fake_openai.polish()

    outcome = refine_report(raw, settings=openai_settings(), facts=required_facts(raw, context))

    assert outcome.refined is True
    assert outcome.error is None
    assert outcome.text == (raw + "\n\n_Polished by the fake model._").strip()
    assert outcome.model == "gpt-test-mini"
    [request] = fake_openai.requests
    assert request.path == "/v1/chat/completions"
    assert request.authorization == f"Bearer {API_KEY}"
    assert request.body["model"] == "gpt-test-mini"
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.user_content == raw
    assert "keep every number" in request.messages[0]["content"].lower()
    words = len(raw.split()) + len(refine_module.SYSTEM_PROMPT.split())
    assert outcome.usage == {
        "prompt_tokens": words,
        "completion_tokens": len(outcome.text.split()),
        "total_tokens": words + len(outcome.text.split()),
    }


def test_server_error_keeps_the_raw_render(
    fake_openai: FakeOpenAI, openai_settings: MakeSettings, context: dict[str, Any]
) -> None:
    raw = raw_report(context)
    fake_openai.fail(500, "The server had an error", retry_after_ms="10")

    outcome = refine_report(raw, settings=openai_settings(max_retries="2"))

    assert (outcome.text, outcome.refined, outcome.usage) == (raw, False, None)
    assert (
        outcome.error
        == "refinement failed: OpenAI answered HTTP 500 after 2 retries: The server had an error"
    )
    assert len(fake_openai.requests) == 3  # the first try and two retries


def test_timeout_keeps_the_raw_render(
    fake_openai: FakeOpenAI, openai_settings: MakeSettings, context: dict[str, Any]
) -> None:
    raw = raw_report(context)
    fake_openai.hang(8)

    outcome = refine_report(raw, settings=openai_settings(timeout="1", max_retries="0"))

    assert (outcome.text, outcome.refined) == (raw, False)
    assert outcome.error == "refinement failed: OpenAI did not answer within 1 s (0 retries)"
    assert len(fake_openai.requests) == 1


def test_dropped_count_keeps_the_raw_render(
    fake_openai: FakeOpenAI, openai_settings: MakeSettings, context: dict[str, Any]
) -> None:
    raw = raw_report(context)
    fake_openai.drop_numbers("3")

    outcome = refine_report(raw, settings=openai_settings(), facts=required_facts(raw, context))

    assert (outcome.text, outcome.refined) == (raw, False)
    assert outcome.error == "refinement dropped counts from the report: 3"
    assert outcome.usage is not None  # the tokens were spent all the same


def test_zero_counts_may_become_words(fake_openai: FakeOpenAI, openai_settings: MakeSettings) -> None:
    fake_openai.reply("Nothing is blocked: none of the 4 tasks.")

    outcome = refine_report("Blocked: 0 of 4", settings=openai_settings(), facts=["4", "0"])

    assert outcome.refined is True


def test_no_api_key_skips_refinement(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    settings = Settings.from_env({"MCP_DATA_DIR": str(tmp_path), "OPENAI_BASE_URL": fake_openai.base_url})

    outcome = refine_report("raw", settings=settings)

    assert outcome == refine_module.RefineOutcome(
        "raw", False, None, "refinement skipped: OPENAI_API_KEY is not set", None
    )
    assert fake_openai.requests == []


def test_auth_error_never_shows_the_key(fake_openai: FakeOpenAI, openai_settings: MakeSettings) -> None:
    fake_openai.fail(
        401, f"Incorrect API key provided: {API_KEY}. Also sk-proj-abc***xyz and Bearer {API_KEY}"
    )

    outcome = refine_report("raw 1", settings=openai_settings(max_retries="2"))

    assert outcome.refined is False
    assert outcome.error is not None
    assert outcome.error.startswith(
        "refinement failed: OpenAI refused the API key (HTTP 401): Incorrect API key"
    )
    assert API_KEY not in outcome.error
    assert "sk-proj" not in outcome.error
    assert len(fake_openai.requests) == 1  # 401 is not retried


def test_connection_refused_keeps_the_raw_render(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings.from_env(
        {
            "MCP_DATA_DIR": str(tmp_path),
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": f"http://user:pw@127.0.0.1:{port}/v1",
            "OPENAI_MAX_RETRIES": "0",
        }
    )

    outcome = refine_report("raw", settings=settings)

    assert (outcome.text, outcome.refined) == ("raw", False)
    assert outcome.error is not None
    assert outcome.error.startswith(
        f"refinement failed: could not connect to http://127.0.0.1:{port}: ConnectError"
    )
    assert "pw" not in outcome.error
    refine_module.close_clients()


def test_unusable_answers_keep_the_raw_render(fake_openai: FakeOpenAI, openai_settings: MakeSettings) -> None:
    settings = openai_settings()
    cases: list[tuple[Callable[[], None], str]] = [
        (lambda: fake_openai.reply(""), "the model returned no text (finish_reason=stop)"),
        (
            lambda: fake_openai.reply("cut", finish_reason="length"),
            "the answer was cut off (finish_reason=length)",
        ),
        (
            lambda: fake_openai.raw(200, b"not json"),
            "OpenAI's answer is not a chat completion (JSONDecodeError",
        ),
        (
            lambda: fake_openai.raw(200, b"plain", "text/plain"),
            "the model returned no text (finish_reason=None)",
        ),
        (lambda: fake_openai.raw(200, b'{"choices": null}'), "the model returned no text"),
        (lambda: fake_openai.raw(200, b'{"choices": [{"message": null}]}'), "the model returned no text"),
    ]
    for arrange, expected in cases:
        arrange()
        outcome = refine_report("raw 1", settings=settings)
        assert (outcome.text, outcome.refined) == ("raw 1", False)
        assert outcome.error is not None
        assert expected in outcome.error


def test_code_fences_around_the_answer_are_removed(
    fake_openai: FakeOpenAI, openai_settings: MakeSettings
) -> None:
    fake_openai.reply("```markdown\n# Report\n\n- 3 done\n```")

    outcome = refine_report("# Report\n- done: 3", settings=openai_settings(), facts=["3"])

    assert outcome.text == "# Report\n\n- 3 done"


def test_too_long_reports_are_not_sent(fake_openai: FakeOpenAI, openai_settings: MakeSettings) -> None:
    raw = "x" * (refine_module.MAX_REFINE_CHARS + 1)

    outcome = refine_report(raw, settings=openai_settings())

    assert outcome.refined is False
    assert outcome.error is not None and outcome.error.startswith("refinement skipped: the report is")
    assert fake_openai.requests == []


def test_one_client_per_process_and_settings(fake_openai: FakeOpenAI, openai_settings: MakeSettings) -> None:
    fake_openai.polish("")
    settings = openai_settings()

    refine_report("one 1", settings=settings)
    first = refine_module._clients.copy()
    refine_report("two 2", settings=openai_settings())  # equal settings, a new object
    assert refine_module._clients == first
    refine_report("three 3", settings=openai_settings(timeout="3"))
    assert len(refine_module._clients) == len(first) + 1

    refine_module._forget_parent_clients()  # what a fork does in the child
    refine_report("four 4", settings=settings)
    assert refine_module._clients.keys() == first.keys()
    assert refine_module._clients != first  # a new client: the inherited one is never used
