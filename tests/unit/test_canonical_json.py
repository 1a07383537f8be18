"""Canonical JSON against the spec appendix examples (exact bytes)."""

from __future__ import annotations

import json

import pytest

from homeserver.events.canonical import CanonicalJsonError, canonical_json, check_canonical

# (input JSON text as written in appendices.md, expected canonical output)
APPENDIX_EXAMPLES = [
    ("{}", "{}"),
    ('{\n    "one": 1,\n    "two": "Two"\n}', '{"one":1,"two":"Two"}'),
    ('{\n    "b": "2",\n    "a": "1"\n}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {"medium": "email", "address": "john.doe@example.org"},
                {"medium": "msisdn", "address": "123456789"}
            ]
        }
    }
}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":'
        '[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},'
        '"success":true}}',
    ),
    ('{\n    "a": "日本語"\n}', '{"a":"日本語"}'),
    ('{\n    "本": 2,\n    "日": 1\n}', '{"日":1,"本":2}'),
    ('{\n    "a": "\\u65E5"\n}', '{"a":"日"}'),
    ('{\n    "a": null\n}', '{"a":null}'),
    ('{\n    "a": -0,\n    "b": 1e10\n}', '{"a":0,"b":10000000000}'),
]


@pytest.mark.parametrize(("source", "expected"), APPENDIX_EXAMPLES)
def test_appendix_examples(source: str, expected: str) -> None:
    assert canonical_json(json.loads(source)) == expected.encode("utf-8")


def test_control_characters_use_spec_escapes() -> None:
    value = {"s": '\b\t\n\f\r"\\\x00\x1f\x7f/'}
    assert canonical_json(value) == b'{"s":"\\b\\t\\n\\f\\r\\"\\\\\\u0000\\u001f\x7f/"}'


def test_non_integral_float_rejected() -> None:
    with pytest.raises(CanonicalJsonError):
        canonical_json({"a": 1.5})
    with pytest.raises(CanonicalJsonError):
        canonical_json({"a": float("nan")})


def test_non_string_key_rejected() -> None:
    with pytest.raises(CanonicalJsonError):
        canonical_json({1: "x"})


def test_lone_surrogate_rejected() -> None:
    with pytest.raises(CanonicalJsonError):
        canonical_json({"a": "\ud800"})


def test_input_not_mutated_by_float_normalisation() -> None:
    value = {"a": [1.0, {"b": 2.0}]}
    assert canonical_json(value) == b'{"a":[1,{"b":2}]}'
    assert value == {"a": [1.0, {"b": 2.0}]}
    assert isinstance(value["a"][0], float)


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1.0},
        {"a": [0.5]},
        {"a": 2**53},
        {"a": -(2**53)},
        {"nested": {"deep": [1, 2, 2**60]}},
        {1: "non-string key"},
    ],
)
def test_check_canonical_rejects(value: object) -> None:
    with pytest.raises(CanonicalJsonError):
        check_canonical(value)


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"a": 2**53 - 1, "b": -(2**53) + 1, "c": [True, False, None, "x"]},
        {"nested": {"list": [{"k": 0}]}},
    ],
)
def test_check_canonical_accepts(value: object) -> None:
    check_canonical(value)
