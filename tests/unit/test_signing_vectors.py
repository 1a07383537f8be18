"""Signing keys and signatures against the spec's cryptographic test vectors
(appendices: "Cryptographic Test Vectors")."""

from __future__ import annotations

import pytest
from signedjson.key import get_verify_key

from homeserver.events.hashing import check_content_hash, compute_content_hash
from homeserver.events.room_versions import RoomVersions
from homeserver.events.signing import (
    SignatureError,
    decode_signing_key,
    decode_verify_key,
    encode_signing_key,
    encode_verify_key,
    generate_signing_key,
    sign_event,
    sign_json_object,
    verify_event_signature,
    verify_json_signature,
    verify_key_id,
)

SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
KEY = decode_signing_key(f"ed25519 1 {SEED}")

# Expected signatures, verbatim from appendices.md.
SIG_EMPTY = "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
SIG_ONE_TWO = "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
SIG_MINIMAL_EVENT = "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
SIG_REDACTABLE_EVENT = (
    "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
)


def test_key_round_trip() -> None:
    assert verify_key_id(KEY) == "ed25519:1"
    # The spec's seed has non-zero padding bits in its last character, so the
    # canonical re-encoding differs in that character only.
    assert encode_signing_key(KEY) == "ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA0"
    fresh = generate_signing_key("abc")
    line = encode_signing_key(fresh)
    again = decode_signing_key(line)
    assert encode_verify_key(again) == encode_verify_key(fresh)
    assert verify_key_id(again) == "ed25519:abc"
    vk = decode_verify_key("ed25519:abc", encode_verify_key(fresh))
    assert encode_verify_key(vk) == encode_verify_key(get_verify_key(fresh))


@pytest.mark.parametrize("line", ["", "ed25519 1", "rsa 1 AAAA", "ed25519 1 !!!!"])
def test_decode_signing_key_rejects_garbage(line: str) -> None:
    with pytest.raises(ValueError):
        decode_signing_key(line)


def test_sign_empty_object() -> None:
    signed = sign_json_object({}, "domain", KEY)
    assert signed == {"signatures": {"domain": {"ed25519:1": SIG_EMPTY}}}
    verify_json_signature(signed, "domain", get_verify_key(KEY))


def test_sign_object_with_data() -> None:
    original = {"one": 1, "two": "Two"}
    signed = sign_json_object(original, "domain", KEY)
    assert signed == {
        "one": 1,
        "signatures": {"domain": {"ed25519:1": SIG_ONE_TWO}},
        "two": "Two",
    }
    assert original == {"one": 1, "two": "Two"}  # not mutated
    tampered = dict(signed, two="Three")
    with pytest.raises(SignatureError):
        verify_json_signature(tampered, "domain", get_verify_key(KEY))


def _hash_and_sign(event: dict[str, object]) -> dict[str, object]:
    # The appendix example uses the pre-v11 redaction rules (it keeps
    # "origin"), i.e. room version 10 here.
    event = dict(event)
    event["hashes"] = {"sha256": compute_content_hash(event)}
    return sign_event(event, "domain", KEY, RoomVersions.V10)


def test_sign_minimal_event() -> None:
    event = {
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "signatures": {},
        "hashes": {},
        "type": "X",
        "content": {},
        "prev_events": [],
        "auth_events": [],
        "depth": 3,
        "unsigned": {"age_ts": 1000000},
    }
    signed = _hash_and_sign(event)
    assert signed == {
        "auth_events": [],
        "content": {},
        "depth": 3,
        "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
        "origin": "domain",
        "origin_server_ts": 1000000,
        "prev_events": [],
        "room_id": "!x:domain",
        "sender": "@a:domain",
        "signatures": {"domain": {"ed25519:1": SIG_MINIMAL_EVENT}},
        "type": "X",
        "unsigned": {"age_ts": 1000000},
    }
    assert event["signatures"] == {}  # input untouched
    verify_event_signature(signed, "domain", get_verify_key(KEY), RoomVersions.V10)


def test_sign_redactable_event() -> None:
    event = {
        "content": {"body": "Here is the message content"},
        "event_id": "$0:domain",
        "origin": "domain",
        "origin_server_ts": 1000000,
        "type": "m.room.message",
        "room_id": "!r:domain",
        "sender": "@u:domain",
        "signatures": {},
        "unsigned": {"age_ts": 1000000},
    }
    signed = _hash_and_sign(event)
    assert signed["hashes"] == {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"}
    assert signed["signatures"] == {"domain": {"ed25519:1": SIG_REDACTABLE_EVENT}}
    assert check_content_hash(signed)
    verify_event_signature(signed, "domain", get_verify_key(KEY), RoomVersions.V10)
    # The signature covers only the redacted form: a redacted copy verifies,
    # but its content hash no longer matches.
    redacted_copy = dict(signed, content={})
    verify_event_signature(redacted_copy, "domain", get_verify_key(KEY), RoomVersions.V10)
    assert not check_content_hash(redacted_copy)
