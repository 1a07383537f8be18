"""/sync behaviour over raw HTTP: initial, incremental, long-poll, limited timelines, filters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]


def timeline(sync: dict[str, Any], room: str) -> list[dict[str, Any]]:
    return list(sync["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", []))


async def test_initial_sync_has_state_and_timeline(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(name="Lobby", topic="Hello")
    sync = await alice.sync()
    joined = sync["rooms"]["join"][room]
    state_types = {e["type"] for e in joined["state"]["events"]} | {
        e["type"] for e in joined["timeline"]["events"]
    }
    assert {
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.name",
        "m.room.topic",
    } <= state_types
    assert sync["next_batch"].startswith("s")
    assert joined["summary"]["m.joined_member_count"] == 1


async def test_incremental_sync_only_returns_new_events(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room()
    first = await alice.sync()
    await alice.send(room, "one", "t1")
    second = await alice.sync(first["next_batch"])
    bodies = [e["content"].get("body") for e in timeline(second, room)]
    assert bodies == ["one"]
    # The sender's own device sees its transaction ID.
    assert timeline(second, room)[0]["unsigned"]["transaction_id"] == "t1"
    third = await alice.sync(second["next_batch"])
    assert room not in third["rooms"]["join"]


async def test_long_poll_wakes_on_new_message(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat")
    assert (await bob.join(room))[0] == 200
    since = (await bob.sync())["next_batch"]

    async def send_later() -> None:
        await asyncio.sleep(0.3)
        await alice.send(room, "wake up", "w1")

    task = asyncio.create_task(send_later())
    start = time.monotonic()
    sync = await bob.sync(since, timeout=10_000)
    elapsed = time.monotonic() - start
    await task
    assert [e["content"]["body"] for e in timeline(sync, room)] == ["wake up"]
    assert elapsed < 5, "the long-poll should return when the message arrives, not at the timeout"


async def test_long_poll_times_out_empty(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    await alice.create_room()
    since = (await alice.sync())["next_batch"]
    sync = await alice.sync(since, timeout=300)
    assert sync["rooms"]["join"] == {}
    assert sync["next_batch"] == since


async def test_limited_timeline_and_pagination_back_to_the_start(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room()
    since = (await alice.sync())["next_batch"]
    for i in range(25):
        await alice.send(room, f"m{i}", f"t{i}")
    sync = await alice.sync(since, filter='{"room":{"timeline":{"limit":5}}}')
    tl = sync["rooms"]["join"][room]["timeline"]
    assert tl["limited"] is True
    assert [e["content"]["body"] for e in tl["events"]] == [f"m{i}" for i in range(20, 25)]
    # Paginate backwards from prev_batch: the rest arrives in order, no gaps or repeats.
    seen: list[str] = []
    token = tl["prev_batch"]
    while True:
        page = await alice.ok(
            "GET", f"/rooms/{room}/messages", params={"dir": "b", "from": token, "limit": "7"}
        )
        seen.extend(e["content"].get("body", e["type"]) for e in page["chunk"])
        if "end" not in page:
            break
        token = page["end"]
    bodies = [b for b in seen if not b.startswith("m.")]
    assert bodies == [f"m{i}" for i in range(19, -1, -1)]
    assert seen[-1] == "m.room.create"


async def test_messages_forwards(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room()
    for i in range(3):
        await alice.send(room, f"m{i}", f"t{i}")
    page = await alice.ok("GET", f"/rooms/{room}/messages", params={"dir": "f", "limit": "100"})
    bodies = [e["content"]["body"] for e in page["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["m0", "m1", "m2"]
    assert page["chunk"][0]["type"] == "m.room.create"


async def test_transaction_ids_deduplicate(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room()
    first = await alice.send(room, "once", "same-txn")
    again = await alice.send(room, "once", "same-txn")
    assert first == again
    page = await alice.ok("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"})
    assert [e["content"].get("body") for e in page["chunk"]].count("once") == 1


async def test_lazy_loading_members(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(preset="public_chat")
    others = [await make_user(f"user{i}") for i in range(4)]
    for o in others:
        assert (await o.join(room))[0] == 200
    await others[0].send(room, "hi", "t1")
    f = '{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}'
    sync = await alice.sync(filter=f)
    joined = sync["rooms"]["join"][room]
    members = {e["state_key"] for e in joined["state"]["events"] if e["type"] == "m.room.member"}
    # Alice's, the sender's and the heroes' (test_sync_lazy_members.py has more).
    assert members == {alice.user_id, others[0].user_id, *joined["summary"]["m.heroes"]}
    assert joined["summary"]["m.joined_member_count"] == 5


async def test_invite_and_leave_sections(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="private_chat", name="Secret", is_direct=True, invite=[bob.user_id])
    sync = await bob.sync()
    invite_state = sync["rooms"]["invite"][room]["invite_state"]["events"]
    types = {e["type"] for e in invite_state}
    assert {"m.room.create", "m.room.join_rules", "m.room.name", "m.room.member"} <= types
    member = next(e for e in invite_state if e["type"] == "m.room.member")
    assert member["content"]["is_direct"] is True
    assert (await bob.join(room))[0] == 200
    since = (await bob.sync())["next_batch"]
    await alice.ok("POST", f"/rooms/{room}/kick", json={"user_id": bob.user_id, "reason": "bye"})
    sync = await bob.sync(since)
    left = sync["rooms"]["leave"][room]
    last = left["timeline"]["events"][-1]
    assert last["type"] == "m.room.member" and last["content"]["membership"] == "leave"


async def test_account_data_and_typing_and_receipts_in_sync(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.join(room)
    since = (await bob.sync())["next_batch"]
    event_id = await alice.send(room, "read me", "t1")
    await alice.ok("PUT", f"/rooms/{room}/typing/{alice.user_id}", json={"typing": True, "timeout": 10000})
    await alice.ok("POST", f"/rooms/{room}/receipt/m.read/{event_id}", json={})
    sync = await bob.sync(since)
    eph = {e["type"]: e["content"] for e in sync["rooms"]["join"][room]["ephemeral"]["events"]}
    assert eph["m.typing"]["user_ids"] == [alice.user_id]
    assert alice.user_id in eph["m.receipt"][event_id]["m.read"]
    await alice.ok("PUT", f"/rooms/{room}/typing/{alice.user_id}", json={"typing": False})
    sync2 = await bob.sync(sync["next_batch"])
    eph2 = {e["type"]: e["content"] for e in sync2["rooms"]["join"][room]["ephemeral"]["events"]}
    assert eph2["m.typing"]["user_ids"] == []


async def test_full_state_and_newly_joined_rooms_get_state(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat", name="Named")
    since = (await bob.sync())["next_batch"]
    await bob.join(room)
    sync = await bob.sync(since)
    joined = sync["rooms"]["join"][room]
    types = {e["type"] for e in joined["state"]["events"] + joined["timeline"]["events"]}
    assert {"m.room.create", "m.room.name", "m.room.power_levels"} <= types
    full = await bob.sync(sync["next_batch"], full_state="true")
    assert room in full["rooms"]["join"]


async def test_sync_state_is_the_state_at_timeline_start(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(name="Old name")
    await alice.ok("PUT", f"/rooms/{room}/state/m.room.name", json={"name": "New name"})
    sync = await alice.sync(filter='{"room":{"timeline":{"limit":1}}}')
    joined = sync["rooms"]["join"][room]
    assert joined["timeline"]["events"][0]["content"] == {"name": "New name"}
    state_name = next(e for e in joined["state"]["events"] if e["type"] == "m.room.name")
    assert state_name["content"] == {"name": "Old name"}
    assert joined["timeline"]["events"][0]["unsigned"]["prev_content"] == {"name": "Old name"}


async def test_full_state_keeps_the_timeline_incremental(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(name="Kept")
    await alice.send(room, "old", "t1")
    since = (await alice.sync())["next_batch"]
    await alice.send(room, "new", "t2")
    sync = await alice.sync(since, full_state="true")
    joined = sync["rooms"]["join"][room]
    assert [e["content"].get("body") for e in joined["timeline"]["events"]] == ["new"]
    assert {"m.room.create", "m.room.name"} <= {e["type"] for e in joined["state"]["events"]}


async def test_heroes_fall_back_to_the_members_who_left(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    carol = await make_user("carol")
    room = await alice.room_with(bob, carol)
    lazy = '{"room":{"timeline":{"limit":10},"state":{"lazy_load_members":true}}}'
    since = (await alice.sync(filter=lazy))["next_batch"]
    await bob.ok("POST", f"/rooms/{room}/leave", json={})
    await alice.ok("POST", f"/rooms/{room}/ban", json={"user_id": carol.user_id})
    joined = (await alice.sync(since, filter=lazy))["rooms"]["join"][room]
    # No one else is joined or invited: the heroes are the users who left or were banned
    # (so that a client can call it "Empty room (was bob and carol)").
    summary = joined["summary"]
    assert summary["m.joined_member_count"] == 1
    assert summary["m.heroes"] == [bob.user_id, carol.user_id]  # in the order they went
    # Their member events came in the timeline, so state does not repeat them.
    gone = {e["state_key"] for e in joined["timeline"]["events"] if e["type"] == "m.room.member"}
    assert gone == {bob.user_id, carol.user_id}


async def test_heroes_are_the_first_members_by_stream_ordering(make_user: MakeUser) -> None:
    # The spec: "the first 5 members of the room, ordered by stream ordering, which are joined
    # or invited" -- not by user ID. Seven others join in an order their IDs do not sort in.
    alice = await make_user("alice")
    names = ["zed", "yan", "xia", "wes", "vic", "uma", "tom"]
    others = [await make_user(n) for n in names]
    room = await alice.create_room()
    for u in others:
        await alice.ok("POST", f"/rooms/{room}/invite", json={"user_id": u.user_id})
        await u.ok("POST", f"/rooms/{room}/join", json={})
    summary = (await alice.sync())["rooms"]["join"][room]["summary"]
    assert summary["m.heroes"] == [u.user_id for u in others[:5]]
    assert summary["m.joined_member_count"] == 8
    # An invitee counts as a member from their invite on; the first joiner sees alice first.
    late = await make_user("sam")
    await alice.ok("POST", f"/rooms/{room}/invite", json={"user_id": late.user_id})
    summary = (await others[0].sync())["rooms"]["join"][room]["summary"]
    assert summary["m.heroes"] == [alice.user_id, *(u.user_id for u in others[1:5])]
    assert summary["m.invited_member_count"] == 1
