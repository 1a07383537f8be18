"""Room previews: GET /rooms/{roomId}/initialSync and then GET /events?room_id= let a user
preview a world-readable room without joining it (matrix-js-sdk's peek); a member gets
their own view."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from tests.support.http import RawClient

MakeUser = Callable[[str], Awaitable[RawClient]]


async def test_a_world_readable_room_can_be_previewed(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    visitor = await make_user("visitor")
    room = await alice.create_room(
        preset="public_chat",
        visibility="public",
        name="Open house",
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
        ],
    )
    sent = [await alice.send(room, f"hello {i}", f"t{i}") for i in range(5)]
    await alice.ok(
        "PUT", f"/user/{quote(alice.user_id)}/rooms/{quote(room)}/account_data/m.tag.x", json={"a": 1}
    )

    peek = await visitor.ok("GET", f"/rooms/{quote(room)}/initialSync", params={"limit": "3"})
    assert peek["room_id"] == room and peek["visibility"] == "public"
    assert "membership" not in peek and "account_data" not in peek
    assert [e["event_id"] for e in peek["messages"]["chunk"]] == sent[-3:]  # oldest first
    assert {(e["type"], e.get("state_key")) for e in peek["state"]} >= {
        ("m.room.name", ""),
        ("m.room.create", ""),
    }
    # `start` pages further back through /messages.
    older = await visitor.ok(
        "GET",
        f"/rooms/{quote(room)}/messages",
        params={"dir": "b", "from": peek["messages"]["start"], "limit": "2"},
    )
    assert [e["event_id"] for e in older["chunk"]] == [sent[1], sent[0]]

    mine = await alice.ok("GET", f"/rooms/{quote(room)}/initialSync")
    assert mine["membership"] == "join"
    assert mine["account_data"] == [{"type": "m.tag.x", "content": {"a": 1}}]
    assert mine["messages"]["chunk"][-1]["event_id"] == sent[-1]


async def test_a_room_that_is_not_world_readable_cannot_be_previewed(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    outsider = await make_user("outsider")
    room = await alice.room_with(bob)
    before = await alice.send(room, "before bob left", "t1")
    await bob.ok("POST", f"/rooms/{quote(room)}/leave", json={})
    await alice.send(room, "after bob left", "t2")
    status, body = await outsider.request("GET", f"/rooms/{quote(room)}/initialSync")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    # A former member sees the room up to when they left.
    gone = await bob.ok("GET", f"/rooms/{quote(room)}/initialSync")
    assert gone["membership"] == "leave"
    bodies = [e["content"].get("body") for e in gone["messages"]["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["before bob left"] and before in {e["event_id"] for e in gone["messages"]["chunk"]}


async def test_a_preview_follows_the_room_live(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    visitor = await make_user("visitor")
    readable = {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
    room = await alice.create_room(preset="public_chat", initial_state=[readable])
    peek = await visitor.ok("GET", f"/rooms/{quote(room)}/initialSync")
    since = peek["messages"]["end"]
    params = {"room_id": room, "from": since, "timeout": "10000"}
    waiting = asyncio.create_task(visitor.ok("GET", "/events", params=params))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # nothing new yet: the request waits
    sent = await alice.send(room, "live", "t1")
    got = await asyncio.wait_for(waiting, 10)
    assert [e["event_id"] for e in got["chunk"]] == [sent] and got["chunk"][0]["room_id"] == room
    assert got["start"] == since and got["end"] != since
    # From its `end`, nothing more; without a room, 400 (only the peeking form is served).
    again = await visitor.ok("GET", "/events", params={"room_id": room, "from": got["end"], "timeout": "0"})
    # (`end` may move on past other streams' positions, never back.)
    assert again["chunk"] == [] and int(again["end"][1:]) >= int(got["end"][1:])
    status, body = await visitor.request("GET", "/events", params={"timeout": "0"})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    private = await alice.create_room(preset="private_chat")
    status, body = await visitor.request("GET", "/events", params={"room_id": private, "timeout": "0"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
