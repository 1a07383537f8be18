"""Sliding sync (MSC4186) over HTTP: the room list and its ranges, what a connection is sent
the first time and afterwards, long-polling, positions, memberships and bad requests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.integration.e2ee.fixtures import olm_user
from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]
PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
ALL_STATE = [["*", "*"]]


async def sliding(
    client: RawClient, body: dict[str, Any], pos: str | None = None, timeout: int = 0
) -> dict[str, Any]:
    params = {"timeout": str(timeout)}
    if pos is not None:
        params["pos"] = pos
    status, out = await client.request("POST", PATH, json=body, params=params)
    assert status == 200, (status, out)
    assert isinstance(out["pos"], str)
    return dict(out)


def a_list(ranges: list[list[int]], timeline_limit: int = 5, **extra: Any) -> dict[str, Any]:
    return {"ranges": ranges, "timeline_limit": timeline_limit, "required_state": [], **extra}


def bodies(room: dict[str, Any]) -> list[str]:
    return [e["content"].get("body") for e in room.get("timeline", []) if e["type"] == "m.room.message"]


async def test_the_list_is_sorted_by_activity_and_cut_by_ranges(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    rooms = [await alice.create_room(name=f"room {i}") for i in range(5)]
    # Messages land in this order, so the last room here is the most recently active.
    order = [rooms[3], rooms[1], rooms[4], rooms[0], rooms[2]]
    for i, room in enumerate(order):
        await alice.send(room, f"hello {i}", f"t{i}")
    # A name change does not move a room up (it is not a "bump" event).
    await alice.ok("PUT", f"/rooms/{quote(rooms[3])}/state/m.room.name", json={"name": "renamed"})
    newest_first = list(reversed(order))
    everything = await sliding(alice, {"lists": {"all": a_list([[0, 9]], 1)}})
    assert list(everything["rooms"]) == newest_first
    stamps = [everything["rooms"][r]["bump_stamp"] for r in newest_first]
    assert stamps == sorted(stamps, reverse=True)

    body = {"lists": {"all": a_list([[0, 1]], 2, required_state=[["m.room.create", ""]])}}
    out = await sliding(alice, body)
    assert out["lists"] == {"all": {"count": 5}}
    assert list(out["rooms"]) == newest_first[:2]
    first = out["rooms"][rooms[2]]
    assert first["initial"] is True and first["membership"] == "join" and first["lists"] == ["all"]
    assert first["name"] == "room 2"
    assert bodies(first) == ["hello 4"] and first["limited"] is True
    assert [(e["type"], e["state_key"]) for e in first["required_state"]] == [("m.room.create", "")]
    assert first["joined_count"] == 1 and first["invited_count"] == 0
    assert first["num_live"] == 0
    # prev_batch pages back through /messages.
    older = await alice.ok(
        "GET", f"/rooms/{quote(rooms[2])}/messages", params={"dir": "b", "from": first["prev_batch"]}
    )
    assert older["chunk"] and all(e["event_id"] != first["timeline"][0]["event_id"] for e in older["chunk"])

    # A wider range; rooms already sent on this connection and unchanged are left out.
    wide = await sliding(alice, {"lists": {"all": a_list([[1, 3]], 2)}}, out["pos"])
    assert wide["lists"] == {"all": {"count": 5}}
    assert list(wide["rooms"]) == newest_first[2:4]
    assert all(r["initial"] is True for r in wide["rooms"].values())

    # New activity in the oldest room brings it to the top of the list.
    oldest = newest_first[-1]
    await alice.send(oldest, "back on top", "t9")
    top = await sliding(alice, {"lists": {"all": a_list([[0, 0]], 2)}}, wide["pos"])
    assert list(top["rooms"]) == [oldest]
    assert top["rooms"][oldest]["bump_stamp"] > stamps[0]


async def test_an_incremental_request_waits_and_carries_only_what_changed(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    busy = await alice.room_with(bob, name="busy")
    quiet = await alice.room_with(bob, name="quiet")
    await bob.send(busy, "before", "t0")
    body = {
        "lists": {"all": a_list([[0, 9]], 10, required_state=[["m.room.name", ""], ["m.room.topic", ""]])}
    }
    first = await sliding(alice, body)
    assert set(first["rooms"]) == {busy, quiet}

    # Nothing new: the long-poll waits for its timeout and answers with no rooms.
    idle = await sliding(alice, body, first["pos"], timeout=300)
    assert idle["rooms"] == {}

    waiting = asyncio.ensure_future(sliding(alice, body, idle["pos"], timeout=10_000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await bob.send(busy, "news", "t1")
    woken = await asyncio.wait_for(waiting, 5)
    assert list(woken["rooms"]) == [busy]
    room = woken["rooms"][busy]
    assert "initial" not in room and bodies(room) == ["news"] and room["num_live"] == 1
    assert room["limited"] is False and room["notification_count"] == 2  # "before" and "news"
    assert "required_state" not in room and "name" not in room

    # A state change the required_state asks for is sent, with the new name.
    await alice.ok("PUT", f"/rooms/{quote(quiet)}/state/m.room.name", json={"name": "renamed"})
    await alice.ok("PUT", f"/rooms/{quote(quiet)}/state/m.room.join_rules", json={"join_rule": "invite"})
    changed = await sliding(alice, body, woken["pos"])
    room = changed["rooms"][quiet]
    assert room["name"] == "renamed"
    assert [(e["type"], e["content"]) for e in room["required_state"]] == [
        ("m.room.name", {"name": "renamed"})
    ]
    assert [e["type"] for e in room["timeline"]] == ["m.room.name", "m.room.join_rules"]


async def test_positions_unknown_or_retried(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    await alice.create_room(name="one")
    body = {"lists": {"all": a_list([[0, 9]], 1)}}
    status, err = await alice.request("POST", PATH, json=body, params={"pos": "nonsense"})
    assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")

    first = await sliding(alice, body)
    second = await sliding(alice, body, first["pos"])
    # The response to `first` may have been lost: the same pos again gets the same answer
    # (the room is not sent as already held).
    again = await sliding(alice, body, first["pos"])
    assert again["rooms"] == second["rooms"] == {}
    # Once the client moves on, the older position is gone.
    await sliding(alice, body, again["pos"])
    status, err = await alice.request("POST", PATH, json=body, params={"pos": first["pos"]})
    assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")
    # Each conn_id is its own connection.
    other = await sliding(alice, {**body, "conn_id": "other"})
    assert len(other["rooms"]) == 1
    metrics = await alice.session.get(alice.base_url + "/metrics")
    assert "\nsotto_sliding_sync_connections 2.0\n" in await metrics.text()
    status, err = await alice.request("POST", PATH, json=body, params={"pos": other["pos"]})
    assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")


async def test_invites_kicks_and_leaves(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    invited = await alice.create_room(name="come in")
    await alice.ok("POST", f"/rooms/{quote(invited)}/invite", json={"user_id": bob.user_id})
    kicked_from = await alice.room_with(bob, name="kick")
    left = await alice.room_with(bob, name="left")
    await bob.ok("POST", f"/rooms/{quote(left)}/leave", json={})
    await alice.ok("POST", f"/rooms/{quote(kicked_from)}/kick", json={"user_id": bob.user_id})

    body = {"lists": {"all": a_list([[0, 9]], 5)}}
    out = await sliding(bob, body)
    # A room left by the user themselves is not listed on a new connection; a kick is.
    assert set(out["rooms"]) == {invited, kicked_from}
    invite = out["rooms"][invited]
    assert invite["membership"] == "invite" and invite["initial"] is True and invite["name"] == "come in"
    assert "timeline" not in invite
    assert {e["type"] for e in invite["invite_state"]} >= {"m.room.create", "m.room.name", "m.room.member"}
    kicked = out["rooms"][kicked_from]
    assert kicked["membership"] == "leave"
    assert kicked["timeline"][-1]["content"]["membership"] == "leave"

    # Joining turns the invite into a joined room, sent whole; leaving is then seen.
    await bob.join(invited)
    joined = await sliding(bob, body, out["pos"])
    assert joined["rooms"][invited]["membership"] == "join" and joined["rooms"][invited]["initial"] is True
    await bob.ok("POST", f"/rooms/{quote(invited)}/leave", json={})
    await alice.send(invited, "after bob left", "t1")
    gone = await sliding(bob, body, joined["pos"])
    room = gone["rooms"][invited]
    assert room["membership"] == "leave"
    assert room["timeline"][-1]["sender"] == bob.user_id  # nothing after the leave
    assert "after bob left" not in bodies(room)


async def test_lazy_members_and_own_member_event(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    carol = await make_user("carol")
    room = await alice.room_with(bob, carol, name="crowd")
    await bob.send(room, "from bob", "t1")
    body = {"lists": {"all": a_list([[0, 0]], 1, required_state=[["m.room.member", "$LAZY"]])}}
    out = await sliding(alice, body)
    members = {e["state_key"] for e in out["rooms"][room]["required_state"]}
    assert members == {bob.user_id, alice.user_id}
    await carol.send(room, "from carol", "t2")
    await bob.send(room, "bob again", "t3")
    more = await sliding(
        alice,
        {"lists": {"all": a_list([[0, 0]], 5, required_state=[["m.room.member", "$LAZY"]])}},
        out["pos"],
    )
    # Carol's member event is new to the client; Bob's it holds already.
    assert {e["state_key"] for e in more["rooms"][room].get("required_state", [])} == {carol.user_id}

    me = await sliding(
        bob, {"lists": {"all": a_list([[0, 0]], 0, required_state=[["m.room.member", "$ME"]])}}
    )
    assert [e["state_key"] for e in me["rooms"][room]["required_state"]] == [bob.user_id]


async def test_room_configs_combine_and_expand(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(name="growing", topic="things")
    for i in range(6):
        await alice.send(room, f"m{i}", f"t{i}")
    narrow = {"lists": {"a": a_list([[0, 0]], 1, required_state=[["m.room.name", ""]])}}
    out = await sliding(alice, narrow)
    assert bodies(out["rooms"][room]) == ["m5"]
    assert [e["type"] for e in out["rooms"][room]["required_state"]] == ["m.room.name"]
    # A subscription with a larger timeline and more state: the superset applies.
    wider = {
        **narrow,
        "room_subscriptions": {
            room: {"timeline_limit": 3, "required_state": [["m.room.topic", ""], ["m.room.name", ""]]}
        },
    }
    grown = await sliding(alice, wider, out["pos"])
    room_out = grown["rooms"][room]
    assert room_out["unstable_expanded_timeline"] is True and bodies(room_out) == ["m3", "m4", "m5"]
    assert [e["type"] for e in room_out["required_state"]] == ["m.room.topic"]
    # Nothing further to send with the same config.
    assert (await sliding(alice, wider, grown["pos"]))["rooms"] == {}


async def test_list_filters(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    dm = await alice.room_with(bob, name="dm")
    await alice.ok("PUT", f"/user/{quote(alice.user_id)}/account_data/m.direct", json={bob.user_id: [dm]})
    encrypted = await alice.create_room(
        name="secret",
        initial_state=[{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    )
    space = await alice.create_room(name="space", creation_content={"type": "m.space"})
    favourite = await alice.create_room(name="fav")
    await alice.ok("PUT", f"/user/{quote(alice.user_id)}/rooms/{quote(favourite)}/tags/m.favourite", json={})
    child = await alice.create_room(name="child")
    await alice.ok("PUT", f"/rooms/{quote(space)}/state/m.space.child/{quote(child)}", json={"via": ["test"]})
    # A child without `via` is no longer a child.
    await alice.ok("PUT", f"/rooms/{quote(space)}/state/m.space.child/{quote(favourite)}", json={})
    invite = await bob.create_room(name="invite")
    await bob.ok("POST", f"/rooms/{quote(invite)}/invite", json={"user_id": alice.user_id})

    def only(**filters: Any) -> dict[str, Any]:
        return {"ranges": [[0, 20]], "timeline_limit": 0, "required_state": [], "filters": filters}

    lists = {
        "dms": only(is_dm=True),
        "encrypted": only(is_encrypted=True),
        "invites": only(is_invite=True),
        "spaces": only(room_types=["m.space"]),
        "not_spaces": only(not_room_types=["m.space"], is_invite=False),
        "favourites": only(tags=["m.favourite"]),
        "others": only(not_tags=["m.favourite"], is_invite=False),
        "in_space": only(spaces=[space]),
        "named": only(room_name_like="SECR"),
    }
    out = await sliding(alice, {"lists": lists})
    counts = {name: v["count"] for name, v in out["lists"].items()}
    assert counts == {
        "dms": 1, "encrypted": 1, "invites": 1, "spaces": 1, "not_spaces": 4,
        "favourites": 1, "others": 4, "in_space": 1, "named": 1,
    }  # fmt: skip
    assert out["rooms"][dm]["is_dm"] is True and out["rooms"][dm]["lists"] == ["dms", "not_spaces", "others"]
    assert set(out["rooms"][encrypted]["lists"]) == {"encrypted", "not_spaces", "others", "named"}
    assert out["rooms"][child]["lists"] == ["not_spaces", "others", "in_space"]
    assert out["rooms"][favourite]["lists"] == ["not_spaces", "favourites"]
    assert out["rooms"][invite]["lists"] == ["invites"]


async def test_bad_requests(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    cases = [
        {"lists": {"a": {"ranges": [[0, 1]], "timeline_limit": 1001, "required_state": []}}},
        {"lists": {"a": {"ranges": [[2, 1]], "timeline_limit": 1, "required_state": []}}},
        {"lists": {"a": {"ranges": [[0, 1]], "timeline_limit": 1, "required_state": [["only-type"]]}}},
        {"lists": []},
        {"room_subscriptions": {"!r:test": {"timeline_limit": "ten"}}},
        {"lists": {"a": {"ranges": [[0, 1]], "filters": {"is_dm": "yes"}}}},
    ]
    for body in cases:
        status, err = await alice.request("POST", PATH, json=body)
        assert (status, err["errcode"]) == (400, "M_BAD_JSON"), body
    status, err = await alice.request("POST", PATH, json={}, params={"set_presence": "away"})
    assert (status, err["errcode"]) == (400, "M_INVALID_PARAM")
    status, err = await RawClient(alice.session, alice.base_url).request("POST", PATH, json={})
    assert (status, err["errcode"]) == (401, "M_MISSING_TOKEN")
    # A subscription to a room the user is not in is ignored; so is an unknown room.
    bob = await make_user("bob")
    private = await bob.create_room(name="private")
    out = await sliding(
        alice,
        {"room_subscriptions": {private: {"timeline_limit": 5}, "!nowhere:test": {"timeline_limit": 5}}},
    )
    assert out["rooms"] == {}
    versions = await alice.ok("GET", "/_matrix/client/versions")
    assert versions["unstable_features"]["org.matrix.simplified_msc3575"] is True


async def test_extensions(make_user: MakeUser, server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice_olm = await olm_user(server, http, "alice")
    alice = alice_olm.raw
    bob = await make_user("bob")
    room = await alice.room_with(bob, name="ext")
    bob_device = (await bob.ok("GET", "/account/whoami"))["device_id"]
    await alice.ok("PUT", f"/user/{quote(alice.user_id)}/account_data/org.example.setting", json={"a": 1})
    await bob.ok(
        "PUT", f"/user/{quote(bob.user_id)}/rooms/{quote(room)}/account_data/org.example.r", json={"b": 2}
    )
    await bob.ok("PUT", f"/user/{quote(bob.user_id)}/account_data/org.example.mine", json={"c": 3})
    await alice.ok(
        "PUT", "/sendToDevice/org.example.ping/t1", json={"messages": {bob.user_id: {bob_device: {"n": 1}}}}
    )
    await bob.ok(
        "POST",
        "/keys/upload",
        json={
            "one_time_keys": {f"signed_curve25519:K{i}": {"key": f"k{i}", "signatures": {}} for i in range(3)}
        },
    )
    sent = await alice.send(room, "read me", "t2")
    await alice.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(sent)}", json={})
    await alice.ok(
        "PUT", f"/rooms/{quote(room)}/typing/{quote(alice.user_id)}", json={"typing": True, "timeout": 30_000}
    )

    extensions = {
        name: {"enabled": True} for name in ("to_device", "e2ee", "account_data", "receipts", "typing")
    }
    body = {"lists": {"all": a_list([[0, 9]], 1)}, "extensions": extensions}
    out = await sliding(bob, body)
    ext = out["extensions"]
    assert [(e["type"], e["content"]) for e in ext["to_device"]["events"]] == [("org.example.ping", {"n": 1})]
    assert ext["e2ee"]["device_one_time_keys_count"] == {"signed_curve25519": 3}
    assert ext["e2ee"]["device_unused_fallback_key_types"] == []
    assert ext["account_data"]["rooms"] == {room: [{"type": "org.example.r", "content": {"b": 2}}]}
    glob = {e["type"]: e["content"] for e in ext["account_data"]["global"]}
    assert glob["org.example.mine"] == {"c": 3} and "global" in glob["m.push_rules"]
    receipt = ext["receipts"]["rooms"][room]
    assert receipt["type"] == "m.receipt" and alice.user_id in receipt["content"][sent]["m.read"]
    assert ext["typing"]["rooms"][room]["content"]["user_ids"] == [alice.user_id]

    # Extensions stay on (sticky) without being named again; the next batch confirms the
    # to-device message, which is not sent twice; typing that stops is sent.
    await alice.ok("PUT", f"/rooms/{quote(room)}/typing/{quote(alice.user_id)}", json={"typing": False})
    again = {"lists": body["lists"], "extensions": {"to_device": {"since": ext["to_device"]["next_batch"]}}}
    nxt = await sliding(bob, again, out["pos"])
    assert nxt["extensions"]["to_device"]["events"] == []
    assert nxt["extensions"]["typing"]["rooms"][room]["content"]["user_ids"] == []
    assert nxt["extensions"]["receipts"]["rooms"] == {}
    assert "device_lists" in nxt["extensions"]["e2ee"]
    assert nxt["extensions"]["account_data"] == {"global": [], "rooms": {}}

    # A device list change of someone Bob shares a room with wakes the long-poll.
    waiting = asyncio.ensure_future(sliding(bob, {"lists": body["lists"]}, nxt["pos"], timeout=10_000))
    await asyncio.sleep(0.2)
    await alice_olm.upload_keys()
    woken = await asyncio.wait_for(waiting, 5)
    assert woken["extensions"]["e2ee"]["device_lists"]["changed"] == [alice.user_id]
    # Turned off: no longer sent.
    off = await sliding(bob, {"extensions": {"typing": {"enabled": False}}}, woken["pos"])
    assert "typing" not in off["extensions"] and "to_device" in off["extensions"]


async def test_a_changed_request_is_answered_at_once(make_user: MakeUser) -> None:
    """A long-poll with nothing new waits, unless the request asks for something new."""
    alice = await make_user("alice")
    first_room = await alice.create_room(name="first")
    second_room = await alice.create_room(name="second")
    await alice.send(first_room, "newest", "t1")
    body = {"lists": {"top": a_list([[0, 0]], 1)}}
    out = await sliding(alice, body)
    assert list(out["rooms"]) == [first_room]
    wider = {"lists": {"top": a_list([[0, 1]], 1)}}
    again = await asyncio.wait_for(sliding(alice, wider, out["pos"], timeout=20_000), 5)
    assert list(again["rooms"]) == [second_room]
    # The same request again: nothing new, so it waits for its timeout.
    waiting = asyncio.ensure_future(sliding(alice, wider, again["pos"], timeout=20_000))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    waiting.cancel()
