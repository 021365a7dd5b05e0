"""Strict JSON decoding in process (api/jsonin.py): what is refused, what is kept, and that
the fast path for plain bodies does not skip what the exact check would find."""

from __future__ import annotations

import json

import pytest

from vrungpu_gateway.api.jsonin import MAX_DEPTH, loads_strict, parse_object
from vrungpu_gateway.errors import InvalidRequest


def nested(levels: int) -> bytes:
    return b'{"a": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "empty"),
        (b"[1]", "must be an object"),
        (nested(MAX_DEPTH + 1), "deeper than 64"),
        (nested(200_000), "deeper than 64"),
        (b'{"a": ' + b'[{"b": ' * 40 + b"1" + b"}]" * 40 + b"}", "deeper than 64"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": [1, -Infinity]}', "-Infinity"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": {"b": -1E+400}}', "out of range"),
        (b'{"a": 9223372036854775808}', "beyond 64 bits"),
        (b'{"a": -9223372036854775809}', "beyond 64 bits"),
        (b'{"a": ' + b"1" * 5000 + b"}", "4300 digits"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"a": ["x", "\\udfff"]}', "surrogate"),
        (b'{"\\ud83d": 1}', "surrogate"),
        (b'{"a": [{"\\udc00": 1}]}', "surrogate"),
        (b'{"a": "x\\u0000"}', "NUL"),
        (b'{"a\\u0000": 1}', "NUL"),
        (b'{"input_data": {"k\\u0000": 1}}', "NUL"),
        (b'{"a": "\xff"}', "utf-8"),
        (b'{"a": "\xed\xa0\x80"}', "utf-8"),
        ('{"a": 1}'.encode("utf-16"), "utf-8"),
        (b'{"a": }', "Expecting value"),
    ],
)
def test_refused(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_object(raw)
    assert info.value.code == "bad_json" and words in info.value.detail
    assert "\n" not in info.value.detail


@pytest.mark.parametrize(
    "body",
    [
        {"a": nested_value}
        for nested_value in (
            json.loads(b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)),
            [2**63 - 1, -(2**63), 1.7976931348623157e308, 5e-324, 0, -0.0, True, None],
            ["\U0001f600 é 한국어", "\\u0000 and \\ud800 as text", "1" * 30],
            {"1e999": "e999", "9223372036854775808": "in a string"},
        )
    ]
    + [{"input_data": {"text": "a\x00b", "n": list(range(1000))}}],
)
def test_kept(body: dict[str, object]) -> None:
    assert parse_object(json.dumps(body, ensure_ascii=False).encode()) == body
    assert parse_object(json.dumps(body).encode()) == body


def test_form_field_json_has_the_same_rules() -> None:
    assert loads_strict('["a", "b"]', what="args") == ["a", "b"]
    for text in ("[" * 5000 + "]" * 5000, '["\\u0000"]', '{"a": NaN}', "[1e999]"):
        with pytest.raises(InvalidRequest) as info:
            loads_strict(text, what="args")
        assert info.value.detail.startswith("args: ")
    with pytest.raises(ValueError):
        loads_strict("[1,", what="args")  # not JSON: the caller's own message
