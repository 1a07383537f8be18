"""PDU format validation (checks on receipt, step 1)."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.testing import RoomSim
from homeserver.events.validation import EventFormatError, required_signature_servers, validate_pdu

ALL = [RoomVersions.V10, RoomVersions.V11, RoomVersions.V12]


def _room(rv: RoomVersion) -> tuple[RoomSim, Event]:
    room = RoomSim(rv)
    room.member("@alice:a.example", "join")
    msg = room.send("m.room.message", "@alice:a.example", {"body": "hi"})
    return room, msg


@pytest.mark.parametrize("rv", ALL)
def test_valid_events_pass(rv: RoomVersion) -> None:
    room, msg = _room(rv)
    validate_pdu(room.create.pdu, rv)
    validate_pdu(msg.pdu, rv)


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": 5}, "type"),
        ({"sender": "alice"}, "sender"),
        ({"content": []}, "content"),
        ({"depth": -1}, "depth"),
        ({"depth": True}, "depth"),
        ({"origin_server_ts": "now"}, "origin_server_ts"),
        ({"hashes": {}}, "hashes"),
        ({"signatures": {"a.example": "x"}}, "signatures"),
        ({"prev_events": "$x"}, "prev_events"),
        ({"auth_events": ["not-an-id"]}, "auth_events"),
        ({"state_key": "k" * 256}, "state_key"),
        ({"content": {"big": "x" * 70000}}, "65536"),
        ({"content": {"n": 1.0}}, "float"),
        ({"content": {"n": 2**53}}, "range"),
        ({"unsigned": []}, "unsigned"),
    ],
)
def test_malformed_events_rejected(rv: RoomVersion, change: dict[str, Any], message: str) -> None:
    _, msg = _room(rv)
    with pytest.raises(EventFormatError, match=message):
        validate_pdu({**msg.pdu, **change}, rv)


def test_room_id_rules() -> None:
    room, msg = _room(RoomVersions.V12)
    with pytest.raises(EventFormatError, match="must not have a room_id"):
        validate_pdu({**room.create.pdu, "room_id": room.room_id}, RoomVersions.V12)
    with pytest.raises(EventFormatError, match="reference hash"):
        validate_pdu({**msg.pdu, "room_id": "!room:a.example"}, RoomVersions.V12)
    with pytest.raises(EventFormatError, match="create event"):
        validate_pdu({**msg.pdu, "auth_events": [room.create.event_id]}, RoomVersions.V12)
    v11_room, v11_msg = _room(RoomVersions.V11)
    with pytest.raises(EventFormatError, match="room_id"):
        validate_pdu({k: v for k, v in v11_room.create.pdu.items() if k != "room_id"}, RoomVersions.V11)
    with pytest.raises(EventFormatError, match="server name"):
        validate_pdu({**v11_msg.pdu, "room_id": "!nodomain"}, RoomVersions.V11)


@pytest.mark.parametrize("rv", ALL)
def test_required_signature_servers(rv: RoomVersion) -> None:
    room, msg = _room(rv)
    assert required_signature_servers(msg) == {"a.example"}
    join = room.send(
        "m.room.member", "@bob:b.example",
        {"membership": "join", "join_authorised_via_users_server": "@alice:a.example"},
        "@bob:b.example", check=False, commit=False,
    )  # fmt: skip
    assert required_signature_servers(join) == {"a.example", "b.example"}
    tpi = room.send(
        "m.room.member", "@carol:c.example",
        {"membership": "invite", "third_party_invite": {"signed": {}}},
        "@dave:d.example", check=False, commit=False,
    )  # fmt: skip
    assert required_signature_servers(tpi) == set()
