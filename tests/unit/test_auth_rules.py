"""Authorisation rules (rooms v10/v11/v12): create events, auth event
selection/validation, power levels, generic state/message rules and the v12
creator rules.  Membership transitions live in test_auth_rules_membership.py."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.events.auth import (
    AuthError,
    auth_types_for_event,
    check_auth,
    get_power_level,
    get_required_level_for_event,
    validate_auth_event_list,
)
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.testing import RoomSim

V10, V11, V12 = RoomVersions.V10, RoomVersions.V11, RoomVersions.V12
ALL = [V10, V11, V12]
ALICE, BOB, CAROL, MALLORY = "@alice:a.example", "@bob:b.example", "@carol:a.example", "@mallory:m.example"


def probe(
    room: RoomSim, type: str, sender: str, content: dict[str, Any], state_key: str | None = None
) -> Event:
    """An event built against the current state but not added to the room."""
    return room.send(type, sender, content, state_key, check=False, commit=False)


def is_allowed(room: RoomSim, event: Event) -> bool:
    try:
        check_auth(event, room.auth_events_for(event, room.state), room.create)
    except AuthError:
        return False
    return True


def make_room(rv: RoomVersion, **kw: Any) -> RoomSim:
    """Alice creates a public room; Bob (mod, 50) and Carol (0) join."""
    room = RoomSim(rv, **kw.pop("sim", {}))
    room.standard_setup(kw.pop("join_rule", "public"), users={BOB: 50, **kw.pop("users", {})})
    room.member(BOB, "join")
    room.member(CAROL, "join")
    return room


# -- create events ----------------------------------------------------------------


@pytest.mark.parametrize("rv", ALL)
def test_create_event_rules(rv: RoomVersion) -> None:
    room = RoomSim(rv)
    create = room.create
    check_auth(create, {})
    with pytest.raises(AuthError, match="prev_events"):
        check_auth(Event(dict(create.pdu, prev_events=["$x"]), rv), {})
    bad_version = dict(create.pdu, content={**create.content, "room_version": "999"})
    with pytest.raises(AuthError, match="unknown room version"):
        check_auth(Event(bad_version, rv), {})
    if rv.room_id_is_create_event_hash:
        with pytest.raises(AuthError, match="room_id"):
            check_auth(Event(dict(create.pdu, room_id="!abc:a.example"), rv), {})
    else:
        with pytest.raises(AuthError, match="domain"):
            check_auth(Event(dict(create.pdu, room_id="!room:elsewhere.example"), rv), {})
    if not rv.implicit_room_creator:
        without_creator = dict(create.pdu, content={"room_version": "10"})
        with pytest.raises(AuthError, match="creator"):
            check_auth(Event(without_creator, rv), {})


@pytest.mark.parametrize("extra", [["@bob:b.example"], []])
def test_v12_additional_creators_valid(extra: list[str]) -> None:
    room = RoomSim(V12, create_content={"additional_creators": extra})
    check_auth(room.create, {})


@pytest.mark.parametrize("extra", ["@bob:b.example", [1], ["not-a-user"], ["@bob"], ["@bob:bad host"]])
def test_v12_additional_creators_invalid(extra: object) -> None:
    room = RoomSim(V12)
    pdu = dict(room.create.pdu, content={"room_version": "12", "additional_creators": extra})
    with pytest.raises(AuthError, match="additional_creators"):
        check_auth(Event(pdu, V12), {})


# -- auth event selection and validation -----------------------------------------


def test_auth_types_for_event() -> None:
    join = {"membership": "join", "join_authorised_via_users_server": BOB}
    assert auth_types_for_event(V11, "m.room.member", CAROL, CAROL, join) == [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", CAROL),
        ("m.room.join_rules", ""),
        ("m.room.member", BOB),
    ]
    # v12 never selects the create event
    assert auth_types_for_event(V12, "m.room.message", ALICE, None, {}) == [
        ("m.room.power_levels", ""),
        ("m.room.member", ALICE),
    ]
    invite = {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}}
    assert auth_types_for_event(V10, "m.room.member", ALICE, BOB, invite)[-2:] == [
        ("m.room.join_rules", ""),
        ("m.room.third_party_invite", "tok"),
    ]
    assert auth_types_for_event(V10, "m.room.member", ALICE, BOB, {"membership": "ban"}) == [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", ALICE),
        ("m.room.member", BOB),
    ]
    assert auth_types_for_event(V12, "m.room.create", ALICE, "", {}) == []


@pytest.mark.parametrize("rv", ALL)
def test_unexpected_auth_event_type_rejected(rv: RoomVersion) -> None:
    room = make_room(rv)
    msg = probe(room, "m.room.message", CAROL, {"body": "hi"})
    auth = room.auth_events_for(msg, room.state)
    check_auth(msg, auth, room.create)
    auth[("m.room.join_rules", "")] = room.state[("m.room.join_rules", "")]
    with pytest.raises(AuthError, match="unexpected auth event"):
        check_auth(msg, auth, room.create)
    # ...which state resolution can opt out of
    check_auth(msg, auth, room.create, validate_auth_events=False)


@pytest.mark.parametrize("rv", ALL)
def test_auth_event_from_other_room_or_rejected(rv: RoomVersion) -> None:
    room, other = make_room(rv), make_room(rv, sim={"start_ts": 5, "room_localpart": "other"})
    assert room.room_id != other.room_id
    other.member(CAROL, "join", content={"displayname": "c"})
    msg = probe(room, "m.room.message", CAROL, {"body": "hi"})
    auth = room.auth_events_for(msg, room.state)
    foreign = dict(auth)
    foreign[("m.room.member", CAROL)] = other.state[("m.room.member", CAROL)]
    with pytest.raises(AuthError, match="another room"):
        check_auth(msg, foreign, room.create)
    rejected = Event(auth[("m.room.member", CAROL)].pdu, rv)
    rejected.rejected_reason = "auth"
    with pytest.raises(AuthError, match="rejected"):
        check_auth(msg, {**auth, ("m.room.member", CAROL): rejected}, room.create)


@pytest.mark.parametrize("rv", ALL)
def test_duplicate_auth_events_rejected(rv: RoomVersion) -> None:
    room = make_room(rv)
    carol_old = room.state[("m.room.member", CAROL)]
    room.member(CAROL, "join", content={"displayname": "Carol"})
    carol_new = room.state[("m.room.member", CAROL)]
    pl = room.state[("m.room.power_levels", "")]
    cited = [pl.event_id, carol_old.event_id, carol_new.event_id]
    if not rv.room_id_is_create_event_hash:
        cited.insert(0, room.create.event_id)
    msg = room.send("m.room.message", CAROL, {"body": "x"}, check=False, commit=False, auth_override=cited)
    listed = [room.events.get(i) or room.create for i in cited]
    with pytest.raises(AuthError, match="duplicate"):
        validate_auth_event_list(msg, listed)
    ok = probe(room, "m.room.message", CAROL, {"body": "x"})
    validate_auth_event_list(ok, [room.events.get(i) or room.create for i in ok.auth_event_ids])


@pytest.mark.parametrize("rv", [V10, V11])
def test_v10_v11_require_create_in_auth_events(rv: RoomVersion) -> None:
    room = make_room(rv)
    good = probe(room, "m.room.message", CAROL, {"body": "x"})
    cited = [i for i in good.auth_event_ids if i != room.create.event_id]
    msg = room.send("m.room.message", CAROL, {"body": "x"}, check=False, commit=False, auth_override=cited)
    auth = room.auth_events_for(msg, room.state)
    with pytest.raises(AuthError, match=r"m\.room\.create"):
        check_auth(msg, auth)


def test_v12_create_must_not_be_cited_and_must_match_room() -> None:
    room = make_room(V12)
    good = probe(room, "m.room.message", CAROL, {"body": "x"})
    cited = [room.create.event_id, *good.auth_event_ids]
    # build_event refuses to produce this, so forge it (auth ignores signatures)
    msg = Event(dict(good.pdu, auth_events=cited), V12)
    with pytest.raises(AuthError, match="must not cite the create"):
        check_auth(msg, room.auth_events_for(msg, room.state), room.create)
    other = RoomSim(V12, creator="@zed:z.example")
    with pytest.raises(AuthError, match="room_id"):
        check_auth(good, room.auth_events_for(good, room.state), other.create)
    with pytest.raises(AuthError, match=r"no m\.room\.create"):
        check_auth(good, room.auth_events_for(good, room.state))
    # the create event may also be handed over inside the mapping
    check_auth(good, {**room.auth_events_for(good, room.state), ("m.room.create", ""): room.create})


# -- generic rules ---------------------------------------------------------------------


@pytest.mark.parametrize("rv", ALL)
def test_sender_not_in_room(rv: RoomVersion) -> None:
    room = make_room(rv)
    assert not is_allowed(room, probe(room, "m.room.message", MALLORY, {"body": "hi"}))
    assert is_allowed(room, probe(room, "m.room.message", CAROL, {"body": "hi"}))


@pytest.mark.parametrize("rv", ALL)
def test_state_event_power(rv: RoomVersion) -> None:
    room = make_room(rv)
    assert not is_allowed(room, probe(room, "m.room.topic", CAROL, {"topic": "t"}, ""))
    assert is_allowed(room, probe(room, "m.room.topic", BOB, {"topic": "t"}, ""))
    assert is_allowed(room, probe(room, "m.room.topic", ALICE, {"topic": "t"}, ""))
    # state_key in another user's namespace
    assert not is_allowed(room, probe(room, "m.custom", BOB, {}, CAROL))
    assert is_allowed(room, probe(room, "m.custom", BOB, {}, BOB))
    # a redaction is an ordinary message event for auth: redact level is irrelevant
    assert is_allowed(room, probe(room, "m.room.redaction", CAROL, {"redacts": "$x"}))


@pytest.mark.parametrize("rv", ALL)
def test_events_override_in_power_levels(rv: RoomVersion) -> None:
    room = make_room(rv, users={CAROL: 10})
    pl = dict(room.state[("m.room.power_levels", "")].content)
    room.send("m.room.power_levels", ALICE, {**pl, "events": {"m.room.name": 10}, "events_default": 20}, "")
    assert is_allowed(room, probe(room, "m.room.name", CAROL, {"name": "n"}, ""))
    assert not is_allowed(room, probe(room, "m.room.message", CAROL, {"body": "b"}))
    assert (
        get_required_level_for_event("m.room.name", True, room.state[("m.room.power_levels", "")].content)
        == 10
    )
    assert get_required_level_for_event("x", True, {}) == 50
    assert get_required_level_for_event("x", False, {}) == 0


@pytest.mark.parametrize("rv", ALL)
def test_m_federate_false(rv: RoomVersion) -> None:
    room = RoomSim(rv, create_content={"m.federate": False})
    room.standard_setup("public")
    assert not is_allowed(room, probe(room, "m.room.member", BOB, {"membership": "join"}, BOB))
    assert is_allowed(room, probe(room, "m.room.member", CAROL, {"membership": "join"}, CAROL))


@pytest.mark.parametrize("rv", ALL)
def test_third_party_invite_event_needs_invite_level(rv: RoomVersion) -> None:
    room = make_room(rv)
    pl = dict(room.state[("m.room.power_levels", "")].content)
    room.send("m.room.power_levels", ALICE, {**pl, "invite": 50}, "")
    content = {"display_name": "x", "key_validity_url": "https://i", "public_key": "AAAA"}
    assert not is_allowed(room, probe(room, "m.room.third_party_invite", CAROL, content, "tok"))
    assert is_allowed(room, probe(room, "m.room.third_party_invite", BOB, content, "tok"))


# -- power levels --------------------------------------------------------------------------


def _pl_change(room: RoomSim, sender: str, **changes: Any) -> bool:
    content = dict(room.state[("m.room.power_levels", "")].content)
    content.update(changes)
    return is_allowed(room, probe(room, "m.room.power_levels", sender, content, ""))


@pytest.mark.parametrize("rv", ALL)
def test_power_level_changes(rv: RoomVersion) -> None:
    room = make_room(rv, users={"@dave:a.example": 100} if rv.privileged_creators else {})
    room.member("@dave:a.example", "join")
    users = dict(room.state[("m.room.power_levels", "")].content["users"])
    top = "@dave:a.example" if rv.privileged_creators else ALICE
    assert _pl_change(room, BOB, users={**users, CAROL: 50})  # up to own level
    assert not _pl_change(room, BOB, users={**users, CAROL: 51})  # above own level
    assert not _pl_change(room, BOB, users={**users, top: 10})  # demote someone above
    assert _pl_change(room, BOB, users={**users, BOB: 0})  # demote self
    assert _pl_change(room, BOB, ban=40)  # 50 (default) -> 40
    assert not _pl_change(room, BOB, ban=60)
    assert not _pl_change(room, CAROL, ban=0)  # insufficient power to send power levels at all
    assert _pl_change(room, BOB, events={"m.room.topic": 50})
    assert not _pl_change(room, BOB, events={"m.room.topic": 51})
    room.send("m.room.power_levels", top, {"users": users, "kick": 100, "events": {"m.x": 75}}, "")
    assert not _pl_change(room, BOB, kick=50)  # current value above sender
    assert not _pl_change(room, BOB, events={})  # removing an entry above sender
    assert _pl_change(room, top, kick=50, events={})


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize(
    "bad",
    [
        {"ban": "50"},
        {"kick": True},
        {"events": {"m.room.name": "50"}},
        {"events": []},
        {"notifications": {"room": 1.5}},
        {"users": {"not-a-user": 10}},
        {"users": {BOB: "10"}},
        {"users": []},
    ],
)
def test_power_levels_must_be_integers(rv: RoomVersion, bad: dict[str, Any]) -> None:
    room = make_room(rv)
    base = {"users": {BOB: 50} if rv.privileged_creators else {BOB: 50, ALICE: 100}}
    good = probe(room, "m.room.power_levels", ALICE, base, "")
    assert is_allowed(room, good)
    bad_event = Event(dict(good.pdu, content={**base, **bad}), rv)
    with pytest.raises(AuthError, match="power_levels"):
        check_auth(bad_event, room.auth_events_for(bad_event, room.state), room.create)


def test_get_power_level_defaults() -> None:
    room = RoomSim(V11)
    room.member(ALICE, "join")
    assert get_power_level(ALICE, room.state, None) == 100  # creator without power levels
    assert get_power_level(BOB, room.state, None) == 0
    room.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}, "users_default": 5}, "")
    assert get_power_level(BOB, room.state, None) == 5


# -- v12 creators ----------------------------------------------------------------------------


def test_v12_creators_have_infinite_power() -> None:
    room = RoomSim(V12, create_content={"additional_creators": [BOB]})
    room.member(ALICE, "join")
    assert get_power_level(ALICE, room.state, room.create) == float("inf")
    room.send("m.room.power_levels", ALICE, {"users": {CAROL: 100}}, "")
    room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    room.member(BOB, "join")
    room.member(CAROL, "join")
    assert get_power_level(BOB, room.state, room.create) == float("inf")
    assert get_power_level(CAROL, room.state, room.create) == 100
    # creators may not be listed in power levels, not even with a huge level
    assert not _pl_change(room, ALICE, users={CAROL: 100, ALICE: 2**53 - 1})
    assert not _pl_change(room, ALICE, users={CAROL: 100, BOB: 100})
    assert _pl_change(room, BOB, users={CAROL: 2**53 - 1})
    # a PL-100 admin can neither kick nor ban a creator; creators can ban admins
    assert not is_allowed(room, probe(room, "m.room.member", CAROL, {"membership": "ban"}, BOB))
    assert not is_allowed(room, probe(room, "m.room.member", CAROL, {"membership": "leave"}, ALICE))
    assert is_allowed(room, probe(room, "m.room.member", BOB, {"membership": "ban"}, CAROL))
    # ...but one creator cannot ban another (equal, infinite power)
    assert not is_allowed(room, probe(room, "m.room.member", BOB, {"membership": "ban"}, ALICE))


def test_v12_auth_event_list_must_not_contain_create() -> None:
    room = make_room(V12)
    good = probe(room, "m.room.message", CAROL, {"body": "x"})
    listed = [room.events[i] for i in good.auth_event_ids]
    validate_auth_event_list(good, listed)
    forged = Event(dict(good.pdu, auth_events=[room.create.event_id, *good.auth_event_ids]), V12)
    with pytest.raises(AuthError, match="create event"):
        validate_auth_event_list(forged, [room.create, *listed])
    with pytest.raises(AuthError, match="not among"):
        validate_auth_event_list(good, [room.create, *listed])
