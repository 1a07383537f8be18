"""Sticky events (MSC4354, unstable names, as Synapse and matrix-js-sdk speak them): sent
with `org.matrix.msc4354.sticky_duration_ms` on /send, delivered by /sync in the room's
`msc4354_sticky` section whatever the timeline's limit or filter, with the time left in
`unsigned.msc4354_sticky_duration_ttl_ms`, until they expire or are redacted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from homeserver.handlers.sticky_events import StickyCleanup
from homeserver.storage.cs_schema import sticky_events
from homeserver.storage.engine import Database
from homeserver.storage.migrate import migrate
from homeserver.storage.sticky_events import StickyEventStore
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

PARAM = "org.matrix.msc4354.sticky_duration_ms"
MEMBER = "org.matrix.msc4143.rtc.member"


async def client(srv: RunningServer, http: aiohttp.ClientSession, name: str) -> RawClient:
    user_id = await srv.register(name)
    token, _ = await srv.hs.auth.create_session(user_id, None, None)
    return RawClient(http, srv.base_url, token, user_id)


async def send_sticky(c: RawClient, room: str, txn: str, duration: int | str, **content: Any) -> str:
    out = await c.ok(
        "PUT",
        f"/rooms/{quote(room)}/send/{MEMBER}/{txn}?{PARAM}={duration}",
        json={"msc4354_sticky_key": txn, **content},
    )
    return str(out["event_id"])


def limited(limit: int, **timeline: Any) -> str:
    return json.dumps({"room": {"timeline": {"limit": limit, **timeline}}})


def section(sync: dict[str, Any], room: str) -> list[dict[str, Any]]:
    return list(sync["rooms"]["join"].get(room, {}).get("msc4354_sticky", {}).get("events", []))


def timeline_ids(sync: dict[str, Any], room: str) -> list[str]:
    return [e["event_id"] for e in sync["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])]


async def test_sticky_event_in_timeline_then_in_its_section(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await client(server, http, "alice")
    bob = await client(server, http, "bob")
    room = await alice.room_with(bob)
    versions = await RawClient(http, server.base_url).ok("GET", "/_matrix/client/versions")
    assert versions["unstable_features"]["org.matrix.msc4354"] is True
    start = (await bob.sync())["next_batch"]

    sticky = await send_sticky(alice, room, "m1", 300_000, call_id="")
    pdu = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(sticky)}")
    assert pdu["msc4354_sticky"] == {"duration_ms": 300_000}
    # The same transaction again is the same event.
    assert await send_sticky(alice, room, "m1", 300_000, call_id="") == sticky

    # In the timeline (with the time left), so not again in the sticky section.
    live = await bob.sync(start)
    event = next(e for e in live["rooms"]["join"][room]["timeline"]["events"] if e["event_id"] == sticky)
    assert event["msc4354_sticky"] == {"duration_ms": 300_000}
    assert 290_000 < event["unsigned"]["msc4354_sticky_duration_ttl_ms"] <= 300_000
    assert section(live, room) == []

    # A gappy sync whose timeline no longer reaches it: the sticky section has it.
    for i in range(5):
        await alice.send(room, f"after {i}", f"a{i}")
    gappy = await bob.sync(start, filter=limited(2))
    assert gappy["rooms"]["join"][room]["timeline"]["limited"] is True
    assert sticky not in timeline_ids(gappy, room)
    [held] = section(gappy, room)
    assert held["event_id"] == sticky and held["content"]["msc4354_sticky_key"] == "m1"
    assert held["msc4354_sticky"] == {"duration_ms": 300_000}
    assert 0 < held["unsigned"]["msc4354_sticky_duration_ttl_ms"] <= 300_000
    assert "room_id" not in held
    # The next incremental sync does not repeat it.
    later = await bob.sync(gappy["next_batch"])
    assert section(later, room) == []

    # A timeline filter that leaves the type out: the section has it (the MSC).
    filtered = await bob.sync(start, filter=limited(10, not_types=[MEMBER]))
    assert [e["event_id"] for e in section(filtered, room)] == [sticky]

    # Initial syncs have it too, and so does a user who joins afterwards.
    assert [e["event_id"] for e in section(await bob.sync(filter=limited(1)), room)] == [sticky]
    carol = await client(server, http, "carol")
    carol_start = (await carol.sync())["next_batch"]
    assert (await carol.join(room))[0] == 200
    joined = await carol.sync(carol_start, filter=limited(1))
    assert [e["event_id"] for e in section(joined, room)] == [sticky]
    # /messages shows the field too (its time left only /sync promises).
    page = await bob.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "20"})
    assert next(e for e in page["chunk"] if e["event_id"] == sticky)["msc4354_sticky"] == {
        "duration_ms": 300_000
    }


async def test_expiry_redaction_and_bad_durations(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(server, http, "alice")
    bob = await client(server, http, "bob")
    room = await alice.room_with(bob)
    short = await send_sticky(alice, room, "s", 60_000)
    capped = await send_sticky(alice, room, "c", 7_200_000)  # counts as an hour
    doomed = await send_sticky(alice, room, "d", 600_000)
    plain = await alice.send(room, "not sticky", "p")

    initial = await bob.sync(filter=limited(1))
    held = {e["event_id"]: e for e in section(initial, room)}
    assert set(held) == {short, capped, doomed} and plain in timeline_ids(initial, room)
    assert held[capped]["msc4354_sticky"] == {"duration_ms": 7_200_000}
    assert 3_590_000 < held[capped]["unsigned"]["msc4354_sticky_duration_ttl_ms"] <= 3_600_000

    # Redacting a sticky event ends its stickiness (`msc4354_sticky` is not kept).
    await alice.ok("PUT", f"/rooms/{quote(room)}/redact/{quote(doomed)}/r1", json={})
    redacted = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(doomed)}")
    assert "msc4354_sticky" not in redacted
    store = StickyEventStore(server.hs.db)
    assert set(await store.expiry_of([short, doomed], server.hs.clock.time_ms())) == {short}
    after = await bob.sync(filter=limited(1))
    assert {e["event_id"] for e in section(after, room)} == {short, capped}

    # Past its end the short one is gone, though its row stays until the cleanup.
    real = server.hs.clock.time_ms
    server.hs.clock.time_ms = lambda: real() + 61_000  # type: ignore[method-assign]
    try:
        later = await bob.sync(filter=limited(1))
        assert {e["event_id"] for e in section(later, room)} == {capped}
        assert await StickyCleanup(server.hs).run_once() == 1
        assert {e["event_id"] for e in section(await bob.sync(filter=limited(1)), room)} == {capped}
    finally:
        del server.hs.clock.time_ms

    for bad in ("soon", "-1", "1.5"):
        status, body = await alice.request(
            "PUT", f"/rooms/{quote(room)}/send/{MEMBER}/bad{bad}?{PARAM}={bad}", json={}
        )
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_more_than_a_response_holds_come_in_the_next(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await client(server, http, "alice")
    bob = await client(server, http, "bob")
    room = await alice.room_with(bob)
    start = (await bob.sync())["next_batch"]
    sent = [await send_sticky(alice, room, f"k{i}", 600_000) for i in range(105)]
    await alice.send(room, "last", "last")

    first = await bob.sync(start, filter=limited(1))
    got = [e["event_id"] for e in section(first, room)]
    assert got == sent[:100]  # in the order they were sent, at most 100
    token = first["next_batch"]
    assert token.count("_") == 2  # says how far the sticky events went
    # The rest at once, even from a long-poll (nothing else is new: it must not wait its
    # minute out), then an ordinary token again.
    second = await asyncio.wait_for(bob.sync(token, timeout=60_000, filter=limited(1)), 20)
    assert [e["event_id"] for e in section(second, room)] == sent[100:]
    assert second["next_batch"].count("_") == 1
    assert section(await bob.sync(second["next_batch"], filter=limited(1)), room) == []


async def test_delayed_sticky_event(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(server, http, "alice")
    room = await alice.create_room()
    out = await alice.ok(
        "PUT",
        f"/rooms/{quote(room)}/send/{MEMBER}/d1",
        json={"msc4354_sticky_key": "DEV"},
        params={"org.matrix.msc4140.delay": "60000", PARAM: "3600000"},
    )
    manage = f"/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{out['delay_id']}/send"
    assert (await RawClient(http, server.base_url).request("POST", manage, json={}))[0] == 200
    initial = await alice.sync(filter=limited(1, types=["m.room.message"]))
    [event] = section(initial, room)
    assert event["type"] == MEMBER and event["msc4354_sticky"] == {"duration_ms": 3_600_000}


async def test_turned_off(tmp_path: str, http: aiohttp.ClientSession) -> None:
    async with run_server(tmp_path, sticky_events={"enabled": False}) as srv:
        alice = await client(srv, http, "alice")
        room = await alice.create_room()
        versions = await RawClient(http, srv.base_url).ok("GET", "/_matrix/client/versions")
        assert versions["unstable_features"]["org.matrix.msc4354"] is False
        event_id = await send_sticky(alice, room, "x", 600_000)
        pdu = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
        assert "msc4354_sticky" not in pdu
        assert section(await alice.sync(filter=limited(1, types=["m.room.message"])), room) == []


async def test_busy_window_without_summary(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """A window too busy for the shared summary: the rooms with sticky rows are looked up once
    for the window instead, with the same outcome."""
    server.hs.sync.reads.window_rows = 0
    alice = await client(server, http, "alice")
    bob = await client(server, http, "bob")
    room = await alice.room_with(bob)
    quiet = await alice.room_with(bob)
    start = (await bob.sync())["next_batch"]
    sticky = await send_sticky(alice, room, "w", 600_000)
    for i in range(3):
        await alice.send(room, f"m{i}", f"m{i}")
        await alice.send(quiet, f"q{i}", f"q{i}")
    gappy = await bob.sync(start, filter=limited(1))
    assert [e["event_id"] for e in section(gappy, room)] == [sticky]
    assert section(gappy, quiet) == []


async def test_a_restart_counts_positions_held_only_by_sticky_rows(tmp_path: Path) -> None:
    """A soft-failed sticky event accepted later gets a stream position no other row holds:
    on SQLite the position loaded at start-up (the highest stored) must not fall behind it.
    (PostgreSQL takes positions from a sequence, which never goes back.)"""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'restart.db'}")
    try:
        await migrate(db)
        await db.load_stream_position()
        ahead = db.current_stream_id + 50
        row = {"event_id": "$x", "room_id": "!r:x", "sender": "@a:x", "position": ahead, "expires_at": 2**50}
        async with db.write() as conn:
            await conn.execute(sticky_events.insert().values(**row))
        await db.load_stream_position()
        assert db.current_stream_id == ahead
    finally:
        await db.close()


async def test_a_new_display_name_is_not_a_join(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """A display name change is a member event too: the room is not sent afresh (no sticky
    events again, no full state). Leaving and joining again is a join."""
    alice = await client(server, http, "alice")
    bob = await client(server, http, "bob")
    room = await alice.room_with(bob, name="call")
    sticky = await send_sticky(alice, room, "k", 600_000)
    token = (await bob.sync())["next_batch"]
    await bob.ok("PUT", f"/profile/{quote(bob.user_id)}/displayname", json={"displayname": "Robert"})
    renamed = await bob.sync(token)
    joined = renamed["rooms"]["join"][room]
    assert [e["content"].get("displayname") for e in joined["timeline"]["events"]] == ["Robert"]
    assert section(renamed, room) == []
    assert "m.room.name" not in {e["type"] for e in joined["state"]["events"]}  # not the full state
    token = renamed["next_batch"]
    await bob.ok("POST", f"/rooms/{quote(room)}/leave", json={})
    assert (await bob.join(room))[0] == 200
    rejoined = await bob.sync(token, filter=limited(1))
    assert [e["event_id"] for e in section(rejoined, room)] == [sticky]
    assert "m.room.name" in {e["type"] for e in rejoined["rooms"]["join"][room]["state"]["events"]}


async def test_relations_show_the_time_left(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(server, http, "alice")
    room = await alice.create_room()
    target = await alice.send(room, "call", "c")
    related = {"rel_type": "m.reference", "event_id": target}
    sticky = await send_sticky(alice, room, "r", 600_000, **{"m.relates_to": related})
    out = await alice.ok("GET", f"/_matrix/client/v1/rooms/{quote(room)}/relations/{quote(target)}")
    [event] = out["chunk"]
    assert event["event_id"] == sticky and event["msc4354_sticky"] == {"duration_ms": 600_000}
    assert 590_000 < event["unsigned"]["msc4354_sticky_duration_ttl_ms"] <= 600_000


async def test_an_erased_users_sticky_events_are_left_out(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await client(server, http, "alice")
    dave = await client(server, http, "dave")
    room = await alice.room_with(dave)
    daves = await send_sticky(dave, room, "d1", 300_000, call_id="")
    alices = await send_sticky(alice, room, "a1", 300_000, call_id="")
    admin_id = await server.register("admin", admin=True)
    token, _ = await server.hs.auth.create_session(admin_id, None, None)
    async with http.post(
        f"{server.base_url}/_synapse/admin/v1/deactivate/{quote(dave.user_id)}",
        json={"erase": True},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
    # A user joining afterwards gets alice's sticky event, not the erased user's stale one
    # (other servers do not get it either: bridge.sticky.unsendable).
    carol = await client(server, http, "carol")
    carol_start = (await carol.sync())["next_batch"]
    assert (await carol.join(room))[0] == 200
    joined = await carol.sync(carol_start, filter=limited(1))
    assert [e["event_id"] for e in section(joined, room)] == [alices]
    assert daves not in [e["event_id"] for e in section(await alice.sync(filter=limited(1)), room)]
