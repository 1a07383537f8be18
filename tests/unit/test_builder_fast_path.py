"""The builder's single-encoding path (strict canonical JSON room versions) gives exactly
the event the step-by-step path (content hash, sign_event, compute_event_id) gives."""

from __future__ import annotations

import random
from typing import Any

import pytest
from canonicaljson import encode_canonical_json
from signedjson.key import get_verify_key

from homeserver.events.builder import build_event
from homeserver.events.canonical import canonical_json, canonical_json_checked
from homeserver.events.hashing import check_content_hash, compute_content_hash, compute_event_id
from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.events.signing import decode_signing_key, sign_event, verify_event_signature

KEY = decode_signing_key("ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
STRICT = [rv for rv in KNOWN_ROOM_VERSIONS.values() if rv.strict_canonical_json]


def _slow(pdu: dict[str, Any], rv: RoomVersion, unsigned: dict[str, Any] | None) -> Event:
    pdu = dict(pdu)
    pdu["hashes"] = {"sha256": compute_content_hash(pdu)}
    pdu = sign_event(pdu, "x", KEY, rv)
    if unsigned is not None:
        pdu["unsigned"] = dict(unsigned)
    return Event(pdu, rv)


def _random_value(rnd: random.Random, depth: int = 0) -> Any:
    choice = rnd.randrange(8 if depth < 3 else 5)
    if choice == 0:
        return rnd.randrange(-(2**53) + 1, 2**53)
    if choice == 1:
        return "".join(
            chr(rnd.choice([0, 9, 10, 31, 34, 92, 127, 0xE9, 0x2028, 0xFFFF, 0x1F600, 65])) for _ in range(4)
        )
    if choice == 2:
        return rnd.choice([True, False, None])
    if choice in (3, 4):
        return "body " + str(rnd.random())
    if choice == 5:
        return [_random_value(rnd, depth + 1) for _ in range(rnd.randrange(3))]
    keys = ["a", "B", "é", "\U0001f600", "ÿ", "m.relates_to", "", "z"]
    return {rnd.choice(keys): _random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))}


@pytest.mark.parametrize("rv", STRICT, ids=lambda rv: rv.identifier)
def test_fast_path_matches_step_by_step(rv: RoomVersion) -> None:
    rnd = random.Random(rv.identifier)
    for i in range(200):
        content = {"msgtype": "m.text", "body": f"m{i}", "extra": _random_value(rnd)}
        event_type = rnd.choice(["m.room.message", "m.room.member", "m.room.power_levels", "m.room.name"])
        state_key = None if event_type == "m.room.message" else ""
        unsigned = {"age": 5} if i % 3 == 0 else None
        kwargs: dict[str, Any] = dict(
            room_version=rv,
            room_id="!room:x",
            type=event_type,
            sender="@a:x",
            content=content,
            state_key=state_key,
            prev_event_ids=["$prev"],
            auth_event_ids=["$auth"],
            depth=i + 2,
            origin_server_ts=1_700_000_000_000 + i,
            server_name="x",
            signing_key=KEY,
            unsigned=unsigned,
        )
        fast = build_event(**kwargs)
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": "@a:x",
            "content": dict(content),
            "depth": i + 2,
            "origin_server_ts": 1_700_000_000_000 + i,
            "prev_events": ["$prev"],
            "auth_events": ["$auth"],
            "room_id": "!room:x",
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        slow = _slow(pdu, rv, unsigned)
        assert fast.pdu == slow.pdu
        assert fast.event_id == slow.event_id == compute_event_id(fast.pdu, rv)
        assert check_content_hash(fast.pdu)
        verify_event_signature(fast.pdu, "x", get_verify_key(KEY), rv)
        assert canonical_json_checked(fast.pdu) == canonical_json(fast.pdu)


def test_checked_encoding_is_canonical_for_every_code_point() -> None:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(chars), 4096):
        chunk = chars[start : start + 4096]
        value = {"s": "".join(chunk), **{c: i for i, c in enumerate(chunk[:512])}}
        assert canonical_json_checked(value) == encode_canonical_json(value)
