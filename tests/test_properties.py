"""Property-based tests (hypothesis) over the registry, the argument merge and the redaction."""

from __future__ import annotations

import json
import logging
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import InvalidArguments, InvalidService
from worker.execution.call import merge_arguments
from worker.ops.logs import ContextFilter
from worker.redaction import MASK, redact, redact_params, register_secrets
from worker.services.config import RESERVED_PARAMS, ServiceConfig, validate_record
from worker.validation import validate_arguments

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
anything = st.one_of(json_values, st.binary(max_size=8), st.tuples(st.integers()))
record_values = st.fixed_dictionaries(
    {},
    optional={
        "user_id": anything | st.text(max_size=60),
        "desc": anything | st.text(max_size=300),
        "interaction_mode": st.sampled_from(
            ["stdio", "sse", "http", "streamful_http", "streamable_http", "ws", ""]
        )
        | anything,
        "url": st.sampled_from(
            ["http://127.0.0.1:8000/mcp", "https://x.example/sse", "ftp://x", "", "mcp-worker a"]
        )
        | anything,
        "endpoint": anything,
        "api_key": st.text(max_size=300) | anything,
        "params": json_values | st.text(max_size=10),
        "auth": st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["api_key", "bearer", "oauth", "none", "kerberos"]) | anything,
                "header": st.sampled_from(["X-API-Key", "bad header", ""]) | anything,
                "env": json_values,
            },
        )
        | anything,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(record_values)
def test_any_record_validates_or_is_refused_with_invalid_service(record: dict[str, Any]) -> None:
    try:
        config = validate_record(record)
    except InvalidService as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(config, ServiceConfig)
    assert config.mode in ("stdio", "sse", "streamable_http")
    assert 0 < len(config.user_id) <= 50 and 0 < len(config.desc) <= 255
    assert config.api_key not in repr(config) or not config.api_key


def _config(params: dict[str, Any]) -> ServiceConfig:
    return ServiceConfig("u", "d", "sse", "http://127.0.0.1:1/sse", None, "k", params, {})


@given(
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
)
def test_the_merge_is_defaults_overlaid_by_the_call(
    defaults: dict[str, Any], arguments: dict[str, Any]
) -> None:
    merged = merge_arguments(_config(defaults), arguments)
    for key, value in arguments.items():
        assert merged[key] == value
    for key, value in defaults.items():
        if key not in arguments and key not in RESERVED_PARAMS:
            assert merged[key] == value
    assert not (RESERVED_PARAMS & (set(merged) - set(arguments)))


@given(anything | json_values)
def test_arguments_are_an_object_of_bounded_json_or_refused(value: Any) -> None:
    try:
        args = validate_arguments(value, max_argument_bytes=2048)
    except InvalidArguments:
        return
    assert isinstance(args, dict)
    assert len(json.dumps(args).encode()) <= 2048


secrets = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=40)


@given(secrets, st.text(max_size=40), st.text(max_size=40))
def test_redact_removes_a_secret_wherever_it_sits(secret: str, before: str, after: str) -> None:
    text = f"{before}{secret}{after}"
    assert secret not in redact(text, [secret])


@given(secrets, json_values)
def test_redact_params_removes_secrets_from_any_structure(secret: str, value: Any) -> None:
    structure = {"nested": [value, {"api_key": secret, "note": f"key={secret}"}], "token": secret}
    assert secret not in json.dumps(redact_params(structure, [secret]))


@given(secrets, st.text(max_size=30))
def test_the_log_filter_masks_registered_secrets(secret: str, prefix: str) -> None:
    register_secrets([secret])
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "%s sees %s and %r", (prefix, secret, {"k": secret}), None
    )
    assert ContextFilter().filter(record)
    assert secret not in record.getMessage()
    assert MASK in record.getMessage()
