"""Purging a room's old history (POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]):
old messages go, with their search rows and notifications; room state, the events read
receipts point at and the room's newest events stay, and the room goes on working."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.security.test_admin_api import A1, user
from tests.support.http import RawClient
from tests.support.server import RunningServer


async def purged(admin: RawClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    purge_id = (await admin.ok("POST", path, json=body))["purge_id"]
    for _ in range(200):
        status: dict[str, Any] = await admin.ok("GET", f"{A1}/purge_history_status/{purge_id}")
        if status["status"] != "active":
            return status
        await asyncio.sleep(0.05)
    raise AssertionError("the purge did not finish")


async def bodies(client: RawClient, room: str) -> list[str]:
    page = await client.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "100"})
    return [e["content"].get("body") for e in reversed(page["chunk"]) if e["type"] == "m.room.message"]


def unread(sync: dict[str, Any], room: str) -> Any:
    return sync["rooms"]["join"][room]["unread_notifications"]["notification_count"]


async def test_old_messages_go_and_the_room_goes_on(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    bob = await user(server, http, "bob")
    room = await alice.room_with(bob)
    await alice.send(room, "old one", "t1")
    read = await alice.send(room, "old two, read", "t2")
    await bob.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(read)}", json={})
    gone = await alice.send(room, "old three", "t3")
    await alice.ok("PUT", f"/rooms/{quote(room)}/state/m.room.topic", json={"topic": "kept"})
    cut = await alice.send(room, "the cut", "t4")
    await alice.send(room, "newest", "t5")
    before = await bob.sync()
    assert unread(before, room) == 3  # old three, the cut, newest

    status = await purged(
        admin, f"{A1}/purge_history/{quote(room)}/{quote(cut)}", {"delete_local_events": True}
    )
    assert status == {"status": "complete"}
    assert await bodies(alice, room) == ["old two, read", "the cut", "newest"]
    assert (await alice.request("GET", f"/rooms/{quote(room)}/event/{quote(gone)}"))[0] == 404
    topic = await alice.ok("GET", f"/rooms/{quote(room)}/state/m.room.topic")
    assert topic == {"topic": "kept"}
    found = await alice.ok(
        "POST", "/search", json={"search_categories": {"room_events": {"search_term": "old"}}}
    )
    assert [r["result"]["content"]["body"] for r in found["search_categories"]["room_events"]["results"]] == [
        "old two, read"
    ]
    # Bob's unread count lost the purged message, and his next sync says so.
    after = await bob.sync(since=before["next_batch"])
    assert unread(after, room) == 2
    assert unread(await bob.sync(), room) == 2

    # The room goes on.
    await alice.send(room, "after the purge", "t6")
    assert (await bodies(bob, room))[-1] == "after the purge"


async def test_by_default_local_messages_stay(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    room = await alice.create_room(preset="public_chat")
    for i in range(3):
        await alice.send(room, f"m{i}", f"t{i}")
    now = server.hs.clock.time_ms() + 60_000
    status = await purged(admin, f"{A1}/purge_history/{quote(room)}", {"purge_up_to_ts": now})
    assert status["status"] == "complete"
    assert await bodies(alice, room) == ["m0", "m1", "m2"]
    # Asked to, everything but the newest message (a forward extremity) goes.
    await purged(
        admin, f"{A1}/purge_history/{quote(room)}", {"purge_up_to_ts": now, "delete_local_events": True}
    )
    assert await bodies(alice, room) == ["m2"]


async def test_bad_requests(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    room = await admin.create_room()
    other = await admin.create_room()
    elsewhere = await admin.send(other, "x", "t1")
    cases = [
        (f"/purge_history/{quote('!nope:' + server.server_name)}", {"purge_up_to_ts": 1}, 404, "M_NOT_FOUND"),
        (f"/purge_history/{quote(room)}/{quote(elsewhere)}", {}, 404, "M_NOT_FOUND"),
        (f"/purge_history/{quote(room)}", {}, 400, "M_MISSING_PARAM"),
        (f"/purge_history/{quote(room)}", {"purge_up_to_ts": "soon"}, 400, "M_BAD_JSON"),
        (
            f"/purge_history/{quote(room)}",
            {"purge_up_to_ts": 1, "delete_local_events": "y"},
            400,
            "M_BAD_JSON",
        ),
        (f"/purge_history/{quote(room)}", {"purge_up_to_event_id": 5}, 400, "M_BAD_JSON"),
    ]
    for path, body, status, errcode in cases:
        got, out = await admin.request("POST", A1 + path, json=body)
        assert (got, out.get("errcode")) == (status, errcode), (path, body, out)
    got, out = await admin.request("GET", f"{A1}/purge_history_status/unknown")
    assert (got, out["errcode"]) == (404, "M_NOT_FOUND")
