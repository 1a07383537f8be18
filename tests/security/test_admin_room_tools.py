"""The admin API's room repair tools: make_room_admin (a joined local admin grants the top
power level, invites when the room is not public), a room's forward extremities listed and
trimmed to the newest (the room goes on working), and fetch_event."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.events import pdu_json
from tests.federation.support import (
    CertAuthority,
    federation_of,
    forge_chain,
    joined_pair,
    make_ca,
    send_pdus,
)
from tests.security.support import Client, raw
from tests.security.test_admin_api import A1, user
from tests.support.server import RunningServer


async def admin_state(admin: Client, room: str, event_type: str) -> dict[str, Any]:
    """A room's current state event of `event_type` (state key ""), as the admin API shows it."""
    state = (await admin.ok("GET", f"{A1}/rooms/{quote(room)}/state"))["state"]
    found: dict[str, Any] = next(e for e in state if e["type"] == event_type and e["state_key"] == "")
    return found


async def power_id(server: RunningServer, room: str) -> str:
    """The ID of the room's current power levels event."""
    return (await server.hs.events.get_current_state_ids(room))[("m.room.power_levels", "")]


async def make_admin(admin: Client, room: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    return await admin.request("POST", f"{A1}/rooms/{quote(room)}/make_room_admin", json=body or {})


async def set_name(client: Client, room: str, name: str) -> int:
    status, _ = await client.request("PUT", f"/rooms/{quote(room)}/state/m.room.name", json={"name": name})
    return status


async def set_power(client: Client, room: str, content: dict[str, Any]) -> None:
    await client.ok("PUT", f"/rooms/{quote(room)}/state/m.room.power_levels", json=content)


async def leave(client: Client, room: str) -> None:
    await client.ok("POST", f"/rooms/{quote(room)}/leave", json={})


async def test_admin_only(server: RunningServer, http: aiohttp.ClientSession) -> None:
    bob = await user(server, http, "bob")
    room = await bob.create_room()
    event = await bob.send(room, "hello", "t1")
    paths = [
        ("POST", f"{A1}/rooms/{quote(room)}/make_room_admin"),
        ("GET", f"{A1}/rooms/{quote(room)}/forward_extremities"),
        ("DELETE", f"{A1}/rooms/{quote(room)}/forward_extremities"),
        ("GET", f"{A1}/fetch_event/{quote(event)}"),
    ]
    for method, path in paths:
        status, out = await bob.request(method, path, json={})
        assert (status, out["errcode"]) == (403, "M_FORBIDDEN"), path
        status, out, _ = await raw(http, method, server.base_url + path, json={})
        assert (status, out["errcode"]) == (401, "M_MISSING_TOKEN"), path
    # Nothing changed: bob's power levels are his own and the room has its one extremity.
    power = await bob.ok("GET", f"/rooms/{quote(room)}/state/m.room.power_levels")
    assert list(power["users"]) == []  # v12: the creator is not listed
    assert (await server.hs.events.get_extremities_and_depth(room))[0] == [event]


async def test_the_caller_becomes_admin_of_a_private_v12_room(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    room = await alice.create_room(room_version="12")
    assert await make_admin(admin, room) == (200, {})
    power = await admin_state(admin, room, "m.room.power_levels")
    # The creator (infinite power, not listed) granted the top listed level.
    assert power["sender"] == alice.user_id
    assert power["content"]["users"] == {admin.user_id: 100}
    # Not public: the admin was invited, joins, and can do what an admin can.
    assert (await admin.join(room))[0] == 200
    assert await set_name(admin, room, "taken over") == 200
    # Asking again changes nothing and sends nothing.
    before = await power_id(server, room)
    assert await make_admin(admin, room) == (200, {})
    assert await power_id(server, room) == before


async def test_an_additional_creator_acts_when_the_creator_left(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    carol = await user(server, http, "carol")
    bob = await user(server, http, "bob")
    room = await alice.room_with(
        carol, bob, room_version="12", creation_content={"additional_creators": [carol.user_id]}
    )
    # A listed admin at 150: a creator grants the highest listed level, not just 100.
    await set_power(alice, room, {"users": {bob.user_id: 150}, "events": {"m.room.power_levels": 100}})
    await leave(alice, room)
    dave = await user(server, http, "dave")
    assert await make_admin(admin, room, {"user_id": dave.user_id}) == (200, {})
    event = await admin_state(admin, room, "m.room.power_levels")
    assert event["sender"] == carol.user_id  # a creator outranks bob's 150
    assert event["content"]["users"] == {bob.user_id: 150, dave.user_id: 150}
    # The room is public: no invite, dave joins by himself.
    assert await server.hs.events.get_membership(room, dave.user_id) is None
    assert (await dave.join(room))[0] == 200
    assert await set_name(dave, room, "dave's now") == 200
    # A creator already outranks everyone: nothing to grant, and not listable in v12.
    before = await power_id(server, room)
    assert await make_admin(admin, room, {"user_id": carol.user_id}) == (200, {})
    assert await power_id(server, room) == before


async def test_v11_room_by_alias(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    bob = await user(server, http, "bob")
    room = await alice.create_room(room_version="11", room_alias_name="private")
    alias = f"#private:{server.server_name}"
    assert await make_admin(admin, alias, {"user_id": bob.user_id}) == (200, {})
    power = await admin_state(admin, room, "m.room.power_levels")
    assert power["sender"] == alice.user_id
    assert power["content"]["users"] == {alice.user_id: 100, bob.user_id: 100}
    membership = await server.hs.events.get_membership(room, bob.user_id)
    assert membership is not None and membership[0] == "invite"
    # Already invited: granted again without a second invite.
    assert await make_admin(admin, room, {"user_id": bob.user_id}) == (200, {})
    assert await server.hs.events.get_membership(room, bob.user_id) == membership
    assert (await bob.join(room))[0] == 200
    assert await set_name(bob, room, "bob's") == 200


async def test_no_local_admin_left(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    bob = await user(server, http, "bob")
    for version in ("11", "12"):
        room = await alice.room_with(bob, room_version=version)
        before = await power_id(server, room)
        await leave(alice, room)
        status, out = await make_admin(admin, room)
        assert (status, out["errcode"]) == (400, "M_UNKNOWN"), (version, out)
        assert await power_id(server, room) == before
    # A joined local user who is listed but may not change the power levels: the auth
    # rules refuse their event, and the answer is 400 too.
    room = await alice.room_with(bob, room_version="11")
    await set_power(
        alice, room, {"users": {alice.user_id: 100, bob.user_id: 50}, "events": {"m.room.power_levels": 100}}
    )
    await leave(alice, room)
    status, out = await make_admin(admin, room)
    assert (status, out["errcode"]) == (400, "M_UNKNOWN")
    assert "power" in out["error"]
    assert await server.hs.events.get_membership(room, admin.user_id) is None


async def test_bad_requests(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    room = await alice.create_room()
    before = await power_id(server, room)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (room, {"user_id": "@someone:elsewhere.example"}, 400, "M_INVALID_PARAM"),
        (room, {"user_id": f"@nobody:{server.server_name}"}, 404, "M_NOT_FOUND"),
        (room, {"user_id": 5}, 400, "M_BAD_JSON"),
        (f"!unknown:{server.server_name}", {}, 404, "M_NOT_FOUND"),
        (f"#unknown:{server.server_name}", {}, 404, "M_NOT_FOUND"),
        ("not-a-room", {}, 400, "M_INVALID_PARAM"),
    ]
    for target, body, status, errcode in cases:
        got, out = await make_admin(admin, target, body)
        assert (got, out.get("errcode")) == (status, errcode), (target, body, out)
    for method in ("GET", "DELETE"):
        got, out = await admin.request(method, f"{A1}/rooms/{quote('!unknown:x')}/forward_extremities")
        assert (got, out["errcode"]) == (404, "M_NOT_FOUND")
    assert await power_id(server, room) == before


async def test_fetch_event(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    room = await alice.create_room()
    event_id = await alice.send(room, "seen by the admin", "t1")
    # The admin is not in the room.
    event = (await admin.ok("GET", f"{A1}/fetch_event/{quote(event_id)}"))["event"]
    assert event["event_id"] == event_id and event["room_id"] == room
    assert (event["type"], event["sender"]) == ("m.room.message", alice.user_id)
    assert event["content"] == {"msgtype": "m.text", "body": "seen by the admin"}
    stored = await server.hs.events.get_event(event_id)
    assert stored is not None
    for key in ("auth_events", "prev_events", "depth", "hashes", "signatures", "origin_server_ts"):
        assert event[key] == stored.event.pdu[key], key
    assert isinstance(event["unsigned"]["age"], int)
    status, out = await admin.request("GET", f"{A1}/fetch_event/{quote('$unknown')}")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")


# Forward extremities: a real fork, from a federation peer --------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(str(tmp_path_factory.mktemp("ca")))


async def test_forward_extremities_trimmed_and_the_room_goes_on(
    ca: CertAuthority, tmp_path: os.PathLike[str], http: aiohttp.ClientSession
) -> None:
    dirs = (os.path.join(str(tmp_path), "a"), os.path.join(str(tmp_path), "b"))
    async with joined_pair(ca, dirs) as (a, b, alice, bob, room_id):
        admin = await user(a, http, "root", admin=True)
        path = f"{A1}/rooms/{quote(room_id)}/forward_extremities"
        assert (await admin.ok("GET", path))["count"] == 1
        # B's messages cite A's head as it was; alice sends on A meanwhile: a fork.
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 2)
        await federation_of(a).queue.stop()  # alice's message stays on A
        own = await alice.send(room_id, "alice meanwhile")
        answers = await send_pdus(b, a, [pdu_json(e) for e in chain], "fork")
        assert answers == {e.event_id: {} for e in chain}

        listed = await admin.ok("GET", path)
        assert listed["count"] == 2
        by_id = {x["event_id"]: x for x in listed["results"]}
        assert set(by_id) == {own, chain[-1].event_id}
        assert by_id[chain[-1].event_id]["depth"] == chain[-1].depth
        assert by_id[chain[-1].event_id]["received_ts"] == chain[-1].origin_server_ts
        assert isinstance(by_id[chain[-1].event_id]["state_group"], int)  # tracked on receipt

        # The head the next event would be built on: now cached, and it must not go stale.
        head, _ = await a.hs.events.get_extremities_and_depth(room_id)
        assert sorted(head) == sorted(by_id)

        # The newest (the last to arrive: B's) is kept.
        assert await admin.ok("DELETE", path) == {"deleted": 1}
        listed = await admin.ok("GET", path)
        assert [x["event_id"] for x in listed["results"]] == [chain[-1].event_id]
        assert await admin.ok("DELETE", path) == {"deleted": 0}

        # The room goes on: a new state event (stored without a check of its prevs against
        # the stored head, unlike messages) cites only the kept extremity, then a message.
        assert (await a.hs.events.get_extremities_and_depth(room_id))[0] == [chain[-1].event_id]
        topic = await alice.state(room_id, "m.room.topic", {"topic": "after the trim"})
        fetched = (await admin.ok("GET", f"{A1}/fetch_event/{quote(topic)}"))["event"]
        assert fetched["prev_events"] == [chain[-1].event_id]
        after = await alice.send(room_id, "after the trim")
        fetched = (await admin.ok("GET", f"{A1}/fetch_event/{quote(after)}"))["event"]
        assert fetched["prev_events"] == [topic]
        assert [x["event_id"] for x in (await admin.ok("GET", path))["results"]] == [after]
        sync = await alice.call("GET", "/sync", timeout="0")
        timeline = sync["rooms"]["join"][room_id]["timeline"]["events"]
        assert [e["event_id"] for e in timeline[-2:]] == [topic, after]
        assert timeline[-1]["content"]["body"] == "after the trim"
