"""Membership authorisation rules (rooms v10/v11/v12): joins under every join
rule, invites (incl. third-party), leaves/kicks, bans/unbans and knocks."""

from __future__ import annotations

from typing import Any

import pytest
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from homeserver.events.auth import AuthError, check_auth
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.signing import encode_verify_key, sign_event
from homeserver.events.testing import RoomSim, test_signing_key

ALL = [RoomVersions.V10, RoomVersions.V11, RoomVersions.V12]
ALICE, BOB, CAROL = "@alice:a.example", "@bob:b.example", "@carol:a.example"
DAVE, EVE = "@dave:d.example", "@eve:e.example"


def make_room(rv: RoomVersion, join_rule: str = "public") -> RoomSim:
    """Alice (creator) + Bob (mod, 50) + Carol (0) joined."""
    room = RoomSim(rv)
    room.standard_setup("public", users={BOB: 50})
    room.member(BOB, "join")
    room.member(CAROL, "join")
    if join_rule != "public":
        room.send("m.room.join_rules", ALICE, {"join_rule": join_rule}, "")
    return room


def attempt(room: RoomSim, target: str, membership: str, sender: str | None = None, **content: Any) -> bool:
    event = room.send(
        "m.room.member", sender or target, {"membership": membership, **content}, target,
        check=False, commit=False,
    )  # fmt: skip
    return allowed(room, event)


def allowed(room: RoomSim, event: Event) -> bool:
    try:
        check_auth(event, room.auth_events_for(event, room.state), room.create)
    except AuthError:
        return False
    return True


@pytest.mark.parametrize("rv", ALL)
def test_creator_first_join_only_right_after_create(rv: RoomVersion) -> None:
    room = RoomSim(rv)
    assert attempt(room, ALICE, "join")
    assert not attempt(room, DAVE, "join")  # no join rules yet: nobody else
    room.member(ALICE, "join")
    room.send("m.room.power_levels", ALICE, {"users": {} if rv.privileged_creators else {ALICE: 100}}, "")
    assert not attempt(room, DAVE, "join")


@pytest.mark.parametrize("rv", ALL)
def test_public_join_and_join_for_someone_else(rv: RoomVersion) -> None:
    room = make_room(rv)
    assert attempt(room, DAVE, "join")
    assert not attempt(room, DAVE, "join", sender=BOB)


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("rule", ["invite", "knock"])
def test_invite_only_join(rv: RoomVersion, rule: str) -> None:
    room = make_room(rv, rule)
    assert not attempt(room, DAVE, "join")
    assert attempt(room, DAVE, "invite", sender=CAROL)  # invite level defaults to 0
    room.member(DAVE, "invite", sender=CAROL)
    assert attempt(room, DAVE, "join")
    assert attempt(room, CAROL, "join")  # already joined: profile change


@pytest.mark.parametrize("rv", ALL)
def test_invite_rules(rv: RoomVersion) -> None:
    room = make_room(rv, "invite")
    assert not attempt(room, EVE, "invite", sender=DAVE)  # inviter not joined
    assert not attempt(room, BOB, "invite", sender=CAROL)  # target already joined
    pl = dict(room.state[("m.room.power_levels", "")].content)
    room.send("m.room.power_levels", ALICE, {**pl, "invite": 50}, "")
    assert not attempt(room, DAVE, "invite", sender=CAROL)
    assert attempt(room, DAVE, "invite", sender=BOB)
    room.member(DAVE, "ban", sender=BOB)
    assert not attempt(room, DAVE, "invite", sender=BOB)  # target banned


@pytest.mark.parametrize("rv", ALL)
def test_knock_rules(rv: RoomVersion) -> None:
    public = make_room(rv)
    assert not attempt(public, DAVE, "knock")
    for rule in ("knock", "knock_restricted"):
        room = make_room(rv, rule)
        assert attempt(room, DAVE, "knock")
        assert not attempt(room, DAVE, "knock", sender=CAROL)  # on someone else's behalf
        assert not attempt(room, CAROL, "knock")  # already joined
        room.member(DAVE, "knock")
        assert attempt(room, DAVE, "leave")  # withdraw the knock
        assert not attempt(room, DAVE, "join")  # knocking does not let you in
        room.member(EVE, "ban", sender=BOB)
        assert not attempt(room, EVE, "knock")


def _restricted_join(room: RoomSim, user: str, authoriser: str | None, sign: bool = True) -> Event:
    content: dict[str, Any] = {"membership": "join"}
    if authoriser:
        content["join_authorised_via_users_server"] = authoriser
    event = room.send("m.room.member", user, content, user, check=False, commit=False)
    if authoriser and sign:
        server = authoriser.split(":", 1)[1]
        event = Event(
            sign_event(event.pdu, server, test_signing_key(server), room.room_version), room.room_version
        )
    return event


@pytest.mark.parametrize("rv", ALL)
@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
def test_restricted_join(rv: RoomVersion, rule: str) -> None:
    room = make_room(rv, rule)
    assert not allowed(room, _restricted_join(room, DAVE, None))
    assert allowed(room, _restricted_join(room, DAVE, BOB))
    assert not allowed(room, _restricted_join(room, DAVE, BOB, sign=False))  # authoriser did not sign
    assert not allowed(room, _restricted_join(room, DAVE, EVE))  # authoriser not joined
    pl = dict(room.state[("m.room.power_levels", "")].content)
    room.send("m.room.power_levels", ALICE, {**pl, "invite": 50}, "")
    assert not allowed(room, _restricted_join(room, DAVE, CAROL))  # authoriser cannot invite
    assert allowed(room, _restricted_join(room, DAVE, BOB))
    # a custom signature verifier is honoured
    event = _restricted_join(room, DAVE, BOB)
    with pytest.raises(AuthError):
        check_auth(
            event, room.auth_events_for(event, room.state), room.create, is_signed_by=lambda e, s: False
        )
    # invited users join without an authoriser
    room.member(DAVE, "invite", sender=BOB)
    assert attempt(room, DAVE, "join")


@pytest.mark.parametrize("rv", ALL)
def test_leave_and_kick(rv: RoomVersion) -> None:
    room = make_room(rv)
    assert attempt(room, CAROL, "leave")
    assert not attempt(room, DAVE, "leave")  # never was a member
    assert attempt(room, CAROL, "leave", sender=BOB)  # mod kicks user
    assert not attempt(room, BOB, "leave", sender=CAROL)  # user kicks mod
    assert not attempt(room, ALICE, "leave", sender=BOB)  # mod kicks admin/creator
    assert not attempt(room, CAROL, "leave", sender=DAVE)  # kicker not in room
    room.member(CAROL, "leave")
    assert attempt(room, CAROL, "join")  # public room: rejoin


@pytest.mark.parametrize("rv", ALL)
def test_ban_and_unban(rv: RoomVersion) -> None:
    room = make_room(rv)
    assert not attempt(room, CAROL, "ban", sender=CAROL)  # power 0 < 50
    assert not attempt(room, ALICE, "ban", sender=BOB)  # target above sender
    assert attempt(room, DAVE, "ban", sender=BOB)  # may ban non-members
    room.member(CAROL, "ban", sender=BOB)
    assert not attempt(room, CAROL, "join")
    assert not attempt(room, CAROL, "leave")  # banned user cannot "leave" the ban
    pl = dict(room.state[("m.room.power_levels", "")].content)
    room.send("m.room.power_levels", ALICE, {**pl, "ban": 60}, "")
    assert not attempt(room, CAROL, "leave", sender=BOB)  # unban needs the ban level
    assert attempt(room, CAROL, "leave", sender=ALICE)


@pytest.mark.parametrize("rv", ALL)
def test_unknown_membership_and_missing_fields(rv: RoomVersion) -> None:
    room = make_room(rv)
    assert not attempt(room, CAROL, "dance")
    event = room.send("m.room.member", CAROL, {"displayname": "x"}, CAROL, check=False, commit=False)
    assert not allowed(room, event)


def _third_party_setup(rv: RoomVersion) -> tuple[RoomSim, Any, dict[str, Any]]:
    room = make_room(rv)
    id_key = generate_signing_key("0")
    room.send(
        "m.room.third_party_invite", BOB,
        {"display_name": "d...@x", "key_validity_url": "https://id/check",
         "public_key": encode_verify_key(get_verify_key(id_key)), "public_keys": []},
        "tok123",
    )  # fmt: skip
    signed = sign_json({"mxid": DAVE, "token": "tok123", "sender": BOB}, "id.example", id_key)
    return room, id_key, signed


@pytest.mark.parametrize("rv", ALL)
def test_third_party_invite(rv: RoomVersion) -> None:
    room, _, signed = _third_party_setup(rv)
    tpi = {"display_name": "d...@x", "signed": signed}
    assert attempt(room, DAVE, "invite", sender=BOB, third_party_invite=tpi)
    # sender differs from the m.room.third_party_invite sender
    assert not attempt(room, DAVE, "invite", sender=ALICE, third_party_invite=tpi)
    # mxid must match the state key
    assert not attempt(room, EVE, "invite", sender=BOB, third_party_invite=tpi)
    # no matching token
    other = sign_json({"mxid": DAVE, "token": "nope"}, "id.example", generate_signing_key("0"))
    assert not attempt(room, DAVE, "invite", sender=BOB, third_party_invite={"signed": other})
    # signed by a key that is not in the invite event
    forged = sign_json({"mxid": DAVE, "token": "tok123"}, "id.example", generate_signing_key("0"))
    assert not attempt(room, DAVE, "invite", sender=BOB, third_party_invite={"signed": forged})
    assert not attempt(room, DAVE, "invite", sender=BOB, third_party_invite={"nosigned": 1})
    room.member(DAVE, "ban", sender=BOB)
    assert not attempt(room, DAVE, "invite", sender=BOB, third_party_invite=tpi)
