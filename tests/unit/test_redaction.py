"""The redaction algorithm per room version (rooms/fragments/v9-redactions for
v10, v11-redactions for v11 and v12)."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.events.redaction import redact
from homeserver.events.room_versions import RoomVersion, RoomVersions

V10, V11, V12 = RoomVersions.V10, RoomVersions.V11, RoomVersions.V12

TOP_LEVEL = {
    "event_id": "$e",
    "type": "m.room.message",
    "room_id": "!r:x",
    "sender": "@u:x",
    "content": {"body": "hi"},
    "hashes": {"sha256": "abc"},
    "signatures": {"x": {"ed25519:1": "sig"}},
    "depth": 4,
    "prev_events": ["$p"],
    "auth_events": ["$a"],
    "origin_server_ts": 1,
    "origin": "x",
    "membership": "join",
    "prev_state": [],
    "unsigned": {"age_ts": 5, "redacted_because": {}},
    "custom": "dropped",
}


def test_top_level_keys_v10() -> None:
    pruned = redact(TOP_LEVEL, V10)
    assert set(pruned) == {
        "event_id", "type", "room_id", "sender", "content", "hashes", "signatures", "depth",
        "prev_events", "auth_events", "origin_server_ts", "origin", "membership", "prev_state",
    }  # fmt: skip
    assert pruned["content"] == {}


@pytest.mark.parametrize("rv", [V11, V12])
def test_top_level_keys_v11_plus(rv: RoomVersion) -> None:
    pruned = redact(TOP_LEVEL, rv)
    assert set(pruned) == {
        "event_id", "type", "room_id", "sender", "content", "hashes", "signatures", "depth",
        "prev_events", "auth_events", "origin_server_ts",
    }  # fmt: skip


def test_state_key_kept_and_input_not_mutated() -> None:
    event = {"type": "m.room.topic", "state_key": "", "content": {"topic": "t"}, "unsigned": {"a": 1}}
    pruned = redact(event, V11)
    assert pruned == {"type": "m.room.topic", "state_key": "", "content": {}}
    assert event["content"] == {"topic": "t"} and "unsigned" in event


MEMBER_CONTENT: dict[str, Any] = {
    "membership": "invite",
    "displayname": "Alice",
    "join_authorised_via_users_server": "@admin:x",
    "third_party_invite": {"display_name": "a...@b", "signed": {"mxid": "@a:x", "token": "t"}},
}
PL_CONTENT: dict[str, Any] = {
    "ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 0, "kick": 50,
    "redact": 50, "state_default": 50, "users": {"@a:x": 100}, "users_default": 0,
    "notifications": {"room": 50}, "historical": 100,
}  # fmt: skip

# (type, content, kept content for v10, kept content for v11/v12)
CONTENT_TABLE: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    (
        "m.room.member",
        MEMBER_CONTENT,
        {"membership": "invite", "join_authorised_via_users_server": "@admin:x"},
        {
            "membership": "invite",
            "join_authorised_via_users_server": "@admin:x",
            "third_party_invite": {"signed": {"mxid": "@a:x", "token": "t"}},
        },
    ),
    (
        "m.room.create",
        {"creator": "@a:x", "room_version": "10", "m.federate": False, "predecessor": {}},
        {"creator": "@a:x"},
        {"creator": "@a:x", "room_version": "10", "m.federate": False, "predecessor": {}},
    ),
    (
        "m.room.join_rules",
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "other": 1},
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
    ),
    (
        "m.room.power_levels",
        PL_CONTENT,
        {k: v for k, v in PL_CONTENT.items() if k not in ("invite", "notifications", "historical")},
        {k: v for k, v in PL_CONTENT.items() if k not in ("notifications", "historical")},
    ),
    (
        "m.room.history_visibility",
        {"history_visibility": "shared", "x": 1},
        {"history_visibility": "shared"},
        {"history_visibility": "shared"},
    ),
    ("m.room.redaction", {"redacts": "$x", "reason": "spam"}, {}, {"redacts": "$x"}),
    ("m.room.aliases", {"aliases": ["#a:x"]}, {}, {}),
    ("m.room.message", {"body": "hello", "msgtype": "m.text"}, {}, {}),
    ("m.room.name", {"name": "Room"}, {}, {}),
]


@pytest.mark.parametrize(("event_type", "content", "kept_v10", "kept_v11"), CONTENT_TABLE)
def test_content_per_type(
    event_type: str, content: dict[str, Any], kept_v10: dict[str, Any], kept_v11: dict[str, Any]
) -> None:
    event = {"type": event_type, "content": content, "sender": "@a:x"}
    assert redact(event, V10)["content"] == kept_v10
    assert redact(event, V11)["content"] == kept_v11
    assert redact(event, V12)["content"] == kept_v11


def test_v11_third_party_invite_without_signed() -> None:
    event = {"type": "m.room.member", "content": {"membership": "invite", "third_party_invite": {"x": 1}}}
    assert redact(event, V11)["content"] == {"membership": "invite", "third_party_invite": {}}


def test_missing_content_becomes_empty_object() -> None:
    assert redact({"type": "m.room.message"}, V11) == {"type": "m.room.message", "content": {}}
