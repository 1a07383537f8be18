"""Event IDs, content hashes, the Event model and the builder for v10/v11/v12."""

from __future__ import annotations

import pytest
from signedjson.key import get_verify_key

from homeserver.events.builder import build_event
from homeserver.events.canonical import CanonicalJsonError
from homeserver.events.hashing import (
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
)
from homeserver.events.identifiers import is_v12_room_id
from homeserver.events.model import Event, pdu_json
from homeserver.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    RoomVersion,
    RoomVersions,
    UnsupportedRoomVersionError,
    get_room_version,
)
from homeserver.events.signing import SignatureError, decode_signing_key, sign_event, verify_event_signature

KEY = decode_signing_key("ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
VK = get_verify_key(KEY)
ALL = [RoomVersions.V10, RoomVersions.V11, RoomVersions.V12]


def _message(rv: RoomVersion, room_id: str = "!room:x", **extra: object) -> Event:
    return build_event(
        room_version=rv,
        room_id=room_id,
        type="m.room.message",
        sender="@a:x",
        content={"body": "hello", "msgtype": "m.text"},
        prev_event_ids=["$prev"],
        auth_event_ids=["$auth"],
        depth=5,
        origin_server_ts=1234,
        server_name="x",
        signing_key=KEY,
        **extra,  # type: ignore[arg-type]
    )


def test_room_version_registry() -> None:
    assert set(KNOWN_ROOM_VERSIONS) == {"10", "11", "12"}
    assert DEFAULT_ROOM_VERSION == "12"
    assert get_room_version("11") is RoomVersions.V11
    with pytest.raises(UnsupportedRoomVersionError):
        get_room_version("9")
    v12 = RoomVersions.V12
    assert v12.state_res == "v2.1" and v12.room_id_is_create_event_hash and v12.privileged_creators
    assert RoomVersions.V11.state_res == "v2" and RoomVersions.V11.updated_redaction_rules
    assert not RoomVersions.V10.implicit_room_creator and RoomVersions.V11.implicit_room_creator


@pytest.mark.parametrize("rv", ALL)
def test_event_id_is_reference_hash(rv: RoomVersion) -> None:
    event = _message(rv)
    assert "event_id" not in event.pdu
    assert event.event_id.startswith("$") and len(event.event_id) == 44
    assert "+" not in event.event_id and "/" not in event.event_id
    assert event.event_id == compute_event_id(event.pdu, rv)
    assert len(compute_reference_hash(event.pdu, rv)) == 32
    # signatures and unsigned are outside the reference hash
    same = dict(event.pdu, signatures={}, unsigned={"age": 3})
    assert compute_event_id(same, rv) == event.event_id
    # ...but the content hash is inside it, so content edits change the ID
    edited = dict(event.pdu, content={"body": "other"})
    edited["hashes"] = {"sha256": compute_content_hash(edited)}
    assert compute_event_id(edited, rv) != event.event_id
    # a stored copy carrying its own ID gets the same ID
    assert Event(dict(event.pdu, event_id="$bogus"), rv).event_id == event.event_id


def test_origin_is_hashed_only_before_v11() -> None:
    pdu = _message(RoomVersions.V10).pdu
    with_origin = dict(pdu, origin="x")
    assert compute_event_id(with_origin, RoomVersions.V10) != compute_event_id(pdu, RoomVersions.V10)
    assert compute_event_id(with_origin, RoomVersions.V11) == compute_event_id(pdu, RoomVersions.V11)


@pytest.mark.parametrize("rv", ALL)
def test_content_hash_detects_tampering(rv: RoomVersion) -> None:
    event = _message(rv)
    assert check_content_hash(event.pdu)
    assert not check_content_hash(dict(event.pdu, content={"body": "evil"}))
    assert not check_content_hash(dict(event.pdu, hashes={}))
    assert not check_content_hash(dict(event.pdu, hashes={"sha256": "!!notbase64"}))
    # unsigned changes in transit do not break the hash
    assert check_content_hash(dict(event.pdu, unsigned={"age": 10}))


@pytest.mark.parametrize("rv", ALL)
def test_sign_verify_tamper(rv: RoomVersion) -> None:
    event = _message(rv)
    verify_event_signature(event.pdu, "x", VK, rv)
    with pytest.raises(SignatureError):
        verify_event_signature(dict(event.pdu, sender="@b:x"), "x", VK, rv)
    with pytest.raises(SignatureError):
        verify_event_signature(dict(event.pdu, depth=6), "x", VK, rv)
    with pytest.raises(SignatureError):
        verify_event_signature(event.pdu, "other.server", VK, rv)
    with pytest.raises(SignatureError):
        verify_event_signature(dict(event.pdu, signatures={"x": "nope"}), "x", VK, rv)
    with pytest.raises(SignatureError):
        verify_event_signature({k: v for k, v in event.pdu.items() if k != "signatures"}, "x", VK, rv)
    # A second server can countersign without disturbing the first signature.
    other = decode_signing_key("ed25519 2 " + "A" * 43)
    both = sign_event(event.pdu, "y", other, rv)
    verify_event_signature(both, "x", VK, rv)
    verify_event_signature(both, "y", get_verify_key(other), rv)


def test_v12_create_derives_room_id() -> None:
    rv = RoomVersions.V12
    create = build_event(
        room_version=rv,
        room_id=None,
        type="m.room.create",
        sender="@a:x",
        content={"room_version": "12"},
        state_key="",
        prev_event_ids=[],
        auth_event_ids=[],
        depth=1,
        origin_server_ts=1,
        server_name="x",
        signing_key=KEY,
    )
    assert "room_id" not in create.pdu and "room_id" not in pdu_json(create)
    assert create.room_id == "!" + create.event_id[1:]
    assert is_v12_room_id(create.room_id)
    assert create.content == {"room_version": "12"}  # no "creator" in v11+
    with pytest.raises(ValueError):
        build_event(
            room_version=rv, room_id="!r:x", type="m.room.create", sender="@a:x", content={},
            state_key="", prev_event_ids=[], auth_event_ids=[], depth=1, origin_server_ts=1,
            server_name="x", signing_key=KEY,
        )  # fmt: skip
    with pytest.raises(ValueError):
        _message(rv, room_id=None)  # type: ignore[arg-type]


def test_v10_create_gets_creator() -> None:
    create = build_event(
        room_version=RoomVersions.V10, room_id="!r:x", type="m.room.create", sender="@a:x",
        content={"room_version": "10"}, state_key="", prev_event_ids=[], auth_event_ids=[],
        depth=1, origin_server_ts=1, server_name="x", signing_key=KEY,
    )  # fmt: skip
    assert create.content["creator"] == "@a:x"
    assert create.room_id == "!r:x"


@pytest.mark.parametrize("rv", ALL)
def test_redacts_placement(rv: RoomVersion) -> None:
    event = build_event(
        room_version=rv, room_id="!r:x", type="m.room.redaction", sender="@a:x", content={"reason": "r"},
        prev_event_ids=[], auth_event_ids=[], depth=2, origin_server_ts=1, server_name="x",
        signing_key=KEY, redacts="$target",
    )  # fmt: skip
    assert event.redacts == "$target"
    if rv.updated_redaction_rules:
        assert event.content["redacts"] == "$target" and "redacts" not in event.pdu
    else:
        assert event.pdu["redacts"] == "$target" and "redacts" not in event.content


def test_model_accessors() -> None:
    rv = RoomVersions.V11
    member = build_event(
        room_version=rv, room_id="!r:x", type="m.room.member", sender="@a:x", state_key="@a:x",
        content={"membership": "join"}, prev_event_ids=["$p1", "$p2"], auth_event_ids=["$a1"],
        depth=7, origin_server_ts=99, server_name="x", signing_key=KEY, unsigned={"age": 1},
    )  # fmt: skip
    assert member.type == "m.room.member" and member.sender == "@a:x"
    assert member.is_state() and member.state_key_tuple == ("m.room.member", "@a:x")
    assert member.membership == "join" and member.redacts is None
    assert member.prev_event_ids == ["$p1", "$p2"] and member.auth_event_ids == ["$a1"]
    assert member.depth == 7 and member.origin_server_ts == 99
    assert member.unsigned == {"age": 1} and member.room_version is rv
    assert check_content_hash(member.pdu)
    msg = _message(rv)
    assert not msg.is_state() and msg.state_key is None and msg.membership is None
    with pytest.raises(ValueError):
        _ = msg.state_key_tuple
    assert Event(msg.pdu, rv, event_id="$given").event_id == "$given"
    assert Event(msg.pdu, rv) == msg and len({msg, Event(msg.pdu, rv)}) == 1


def test_builder_rejects_non_canonical_content() -> None:
    with pytest.raises(CanonicalJsonError):
        build_event(
            room_version=RoomVersions.V11, room_id="!r:x", type="m.room.message", sender="@a:x",
            content={"n": 1.5}, prev_event_ids=[], auth_event_ids=[], depth=1, origin_server_ts=1,
            server_name="x", signing_key=KEY,
        )  # fmt: skip


def test_v12_builder_refuses_to_cite_create() -> None:
    room_id = "!" + "A" * 43
    with pytest.raises(ValueError, match="create event"):
        build_event(
            room_version=RoomVersions.V12, room_id=room_id, type="m.room.message", sender="@a:x",
            content={}, prev_event_ids=[], auth_event_ids=["$" + "A" * 43], depth=2,
            origin_server_ts=1, server_name="x", signing_key=KEY,
        )  # fmt: skip
