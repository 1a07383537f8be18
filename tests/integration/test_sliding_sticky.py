"""Sliding sync's sticky events extension (MSC4480, `org.matrix.msc4354.sticky_events`, in
Synapse's shape): `{"enabled", "limit", "since"}` in, `{"next_batch", "rooms": {room:
{"events"}}}` out, over HTTP: first and incremental requests, gappy timelines, rooms
joined or newly sent, rooms out of scope, the limit's carry-over, and turned off."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from homeserver.api.sliding_sync import SLIDING_SYNC_KEY
from homeserver.sync.sliding.config import RequiredState, RoomConfig
from homeserver.sync.sliding.connections import Position, RoomSent, decode, encode
from tests.integration.test_sliding_sync import a_list, bodies, sliding
from tests.support.http import RawClient
from tests.support.server import run_server

MakeUser = Callable[[str], Awaitable[RawClient]]
EXT = "org.matrix.msc4354.sticky_events"
PARAM = "org.matrix.msc4354.sticky_duration_ms"
MEMBER = "org.matrix.msc4143.rtc.member"


async def send_sticky(c: RawClient, room: str, key: str, duration: int = 300_000) -> str:
    out = await c.ok(
        "PUT",
        f"/rooms/{quote(room)}/send/{MEMBER}/{key}?{PARAM}={duration}",
        json={"msc4354_sticky_key": key, "call_id": ""},
    )
    return str(out["event_id"])


def sticky_ids(out: dict[str, Any], room: str) -> list[str]:
    return [e["event_id"] for e in out["extensions"][EXT]["rooms"].get(room, {}).get("events", [])]


def timeline_ids(out: dict[str, Any], room: str) -> list[str]:
    return [e["event_id"] for e in out["rooms"].get(room, {}).get("timeline", [])]


def body(lists: dict[str, Any], since: str | None = None, **ext: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"enabled": True, **ext}
    if since is not None:
        config["since"] = since
    return {"lists": lists, "extensions": {EXT: config}}


async def test_first_incremental_and_gappy(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.room_with(bob, name="call")
    sticky = await send_sticky(alice, room, "DEV1")
    for i in range(5):
        await alice.send(room, f"after {i}", f"a{i}")
    lists = {"all": a_list([[0, 9]], 1)}

    # First request: the timeline (one event) no longer reaches it, the extension has it.
    first = await sliding(bob, body(lists))
    assert bodies(first["rooms"][room]) == ["after 4"]
    ext = first["extensions"][EXT]
    assert set(ext) == {"next_batch", "rooms"} and ext["next_batch"].startswith("sticky_")
    [held] = ext["rooms"][room]["events"]
    assert held["event_id"] == sticky and held["type"] == MEMBER and "room_id" not in held
    assert held["content"]["msc4354_sticky_key"] == "DEV1"
    assert held["msc4354_sticky"] == {"duration_ms": 300_000}
    assert 290_000 < held["unsigned"]["msc4354_sticky_duration_ttl_ms"] <= 300_000

    # A timeline that carries it: not repeated in the extension (as Synapse).
    wide = await sliding(bob, {**body({"all": a_list([[0, 9]], 10)}), "conn_id": "wide"})
    assert sticky in timeline_ids(wide, room) and wide["extensions"][EXT]["rooms"] == {}

    # Incremental: nothing new, nothing repeated; the long-poll waits.
    since = ext["next_batch"]
    idle = await sliding(bob, body(lists, since), first["pos"], timeout=300)
    assert idle["rooms"] == {} and idle["extensions"][EXT]["rooms"] == {}
    since = idle["extensions"][EXT]["next_batch"]

    # A new sticky event wakes it; a gappy timeline (limit 1, messages after) leaves it out,
    # so the extension has it, once.
    waiting = asyncio.ensure_future(sliding(bob, body(lists, since), idle["pos"], timeout=10_000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    second = await send_sticky(alice, room, "DEV2")
    woken = await asyncio.wait_for(waiting, 5)
    assert timeline_ids(woken, room) == [second] and woken["extensions"][EXT]["rooms"] == {}

    third = await send_sticky(alice, room, "DEV3")
    for i in range(10):
        await alice.send(room, f"more {i}", f"m{i}")
    since = woken["extensions"][EXT]["next_batch"]
    gappy = await sliding(bob, body(lists, since), woken["pos"])
    assert gappy["rooms"][room]["limited"] is True and bodies(gappy["rooms"][room]) == ["more 9"]
    assert sticky_ids(gappy, room) == [third]
    again = await sliding(bob, body(lists, gappy["extensions"][EXT]["next_batch"]), gappy["pos"], timeout=200)
    assert again["extensions"][EXT]["rooms"] == {}

    # Without `since` (a client starting over): every unexpired one, in stream order.
    scratch = await sliding(bob, body(lists), again["pos"])
    assert sticky_ids(scratch, room) == [sticky, second, third]

    # The extension's config left out: it stays on and goes on from where it got to.
    await send_sticky(alice, room, "DEV4")
    fourth = await send_sticky(alice, room, "DEV5")
    await alice.send(room, "last", "last")
    kept = await sliding(bob, {"lists": lists}, scratch["pos"])
    assert len(sticky_ids(kept, room)) == 2 and sticky_ids(kept, room)[-1] == fourth
    quiet = await sliding(bob, {"lists": lists}, kept["pos"], timeout=200)
    assert quiet["extensions"][EXT]["rooms"] == {}


async def test_joined_rooms_and_scope(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    carol = await make_user("carol")
    busy = await carol.create_room(name="busy")
    call = await alice.create_room(name="call", preset="public_chat")
    sticky = await send_sticky(alice, call, "DEV1")
    for i in range(3):
        await alice.send(call, f"chat {i}", f"c{i}")
    await carol.send(busy, "busiest", "b0")
    # Only the top room is in the window.
    lists = {"top": a_list([[0, 0]], 1)}
    first = await sliding(carol, body(lists))
    assert list(first["rooms"]) == [busy] and first["extensions"][EXT]["rooms"] == {}

    # Carol joins `call`: it is out of the window (busy is newer) but matched by the list, so
    # the extension brings its unexpired sticky events, from before her join too.
    assert (await carol.join(call))[0] == 200
    await carol.send(busy, "still busiest", "b1")
    joined = await sliding(carol, body(lists, first["extensions"][EXT]["next_batch"]), first["pos"])
    assert list(joined["rooms"]) == [busy]
    assert sticky_ids(joined, call) == [sticky]

    # A room outside every list and subscription is out of scope; subscribed, it is sent
    # whole, with its sticky events.
    other = await alice.create_room(name="other", preset="public_chat")
    assert (await carol.join(other))[0] == 200
    hidden = await send_sticky(alice, other, "DEV2")
    await alice.send(other, "hidden chat", "h0")
    named = {"named": a_list([[0, 9]], 1, filters={"room_name_like": "bus"})}
    scoped = await sliding(carol, body(named))
    assert list(scoped["rooms"]) == [busy] and scoped["extensions"][EXT]["rooms"] == {}
    since = scoped["extensions"][EXT]["next_batch"]
    another = await send_sticky(alice, other, "DEV3")
    await alice.send(other, "more hidden", "h1")
    out = await sliding(carol, body(named, since), scoped["pos"], timeout=200)
    assert other not in out["extensions"][EXT]["rooms"]
    since = out["extensions"][EXT]["next_batch"]
    sub = {**body(named, since), "room_subscriptions": {other: {"timeline_limit": 1}}}
    subscribed = await sliding(carol, sub, out["pos"])
    assert subscribed["rooms"][other]["initial"] is True
    assert bodies(subscribed["rooms"][other]) == ["more hidden"]
    assert sticky_ids(subscribed, other) == [hidden, another]


async def test_limit_carries_over(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.room_with(bob)
    sent = [await send_sticky(alice, room, f"D{i}") for i in range(5)]
    await alice.send(room, "after", "a")
    lists = {"all": a_list([[0, 9]], 1)}
    got: list[str] = []
    out = await sliding(bob, body(lists, limit=2))
    got += sticky_ids(out, room)
    assert len(got) == 2
    # The rest come in the next responses, at once (no long-poll wait).
    for expected in (2, 1):
        since = out["extensions"][EXT]["next_batch"]
        out = await asyncio.wait_for(sliding(bob, body(lists, since, limit=2), out["pos"], timeout=20_000), 5)
        assert len(sticky_ids(out, room)) == expected
        got += sticky_ids(out, room)
    assert got == sent
    # Then nothing more: the long-poll waits.
    since = out["extensions"][EXT]["next_batch"]
    last = await sliding(bob, body(lists, since, limit=2), out["pos"], timeout=300)
    assert last["extensions"][EXT] == {"next_batch": since, "rooms": {}}
    # A limit of 0 reads nothing and stays where it was (as Synapse).
    zero = await sliding(bob, body(lists, limit=0), last["pos"])
    assert zero["extensions"][EXT] == {"next_batch": "sticky_0", "rooms": {}}
    # Above 100 counts as 100.
    many = await sliding(bob, body(lists, limit=1000), zero["pos"])
    assert sticky_ids(many, room) == sent


async def test_a_room_joined_during_a_carry_over_comes_once(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    # The second room's first sticky event is older than all of the first room's.
    second_room = await alice.create_room(preset="public_chat")
    before = await send_sticky(alice, second_room, "B0")
    first_room = await alice.room_with(bob)
    sent = [await send_sticky(alice, first_room, f"A{i}") for i in range(3)]
    lists = {"all": a_list([[0, 9]], 0)}
    out = await sliding(bob, body(lists, limit=1))
    got = [(r, e["event_id"]) for r, v in out["extensions"][EXT]["rooms"].items() for e in v["events"]]
    # Bob joins it while the first room's are still being carried over.
    assert (await bob.join(second_room))[0] == 200
    after = await send_sticky(alice, second_room, "B1")
    for _ in range(10):
        since = out["extensions"][EXT]["next_batch"]
        out = await sliding(bob, body(lists, since, limit=1), out["pos"], timeout=200)
        batch = [(r, e["event_id"]) for r, v in out["extensions"][EXT]["rooms"].items() for e in v["events"]]
        if not batch:
            break
        got += batch
    assert sorted(got) == sorted(
        [(first_room, e) for e in sent] + [(second_room, before), (second_room, after)]
    )
    assert [e for r, e in got if r == first_room] == sent


async def test_bad_config_turned_off_and_disabled(
    make_user: MakeUser, tmp_path: str, http: aiohttp.ClientSession
) -> None:
    alice = await make_user("alice")
    room = await alice.create_room()
    await send_sticky(alice, room, "D")
    lists = {"all": a_list([[0, 9]], 0)}
    for bad in ({"limit": -1}, {"limit": "5"}, {"since": "s5"}, {"since": 5}):
        status, err = await alice.request(
            "POST",
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            json=body(lists, **bad),
        )
        assert (status, err["errcode"]) == (400, "M_BAD_JSON"), bad
    on = await sliding(alice, body(lists))
    assert len(on["extensions"][EXT]["rooms"][room]["events"]) == 1
    off = await sliding(alice, {"lists": lists, "extensions": {EXT: {"enabled": False}}}, on["pos"])
    assert EXT not in off["extensions"]
    # Not asked for: not sent.
    assert EXT not in (await sliding(alice, {"lists": lists}))["extensions"]

    async with run_server(tmp_path, sticky_events={"enabled": False}) as srv:
        user_id = await srv.register("dora")
        token, _ = await srv.hs.auth.create_session(user_id, None, None)
        dora = RawClient(http, srv.base_url, token, user_id)
        await dora.create_room()
        out = await sliding(dora, body(lists))
        assert EXT not in out["extensions"] and len(out["rooms"]) == 1
        # Nor is it recorded as on (once turned on, the connection gets it from the start).
        handler = srv.runner.app[SLIDING_SYNC_KEY]
        [conn] = [c for c in handler.connections._conns.values()]
        assert all(EXT not in p.extensions for p in conn.positions.values())


def test_the_position_is_kept_with_the_connection() -> None:
    """With workers the connection's position goes through the database's JSON."""
    config = RoomConfig(1, RequiredState())
    position = Position(42, 7, {"!a:test": RoomSent(40, "join", config)}, {"all": 1}, frozenset({EXT}))
    assert decode(encode(position)).sticky is None
    position.sticky = 39
    assert decode(encode(position)).sticky == 39


async def test_a_new_display_name_is_not_a_join(make_user: MakeUser) -> None:
    """A display name change moves the user's member event: the room's sticky events are
    not sent again for it; leaving and joining again sends them."""
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.room_with(bob, name="call")
    sticky = await send_sticky(alice, room, "DEV1")
    for i in range(3):
        await alice.send(room, f"after {i}", f"a{i}")
    lists = {"all": a_list([[0, 9]], 1)}
    first = await sliding(bob, body(lists))
    assert sticky_ids(first, room) == [sticky]
    since = first["extensions"][EXT]["next_batch"]
    await bob.ok("PUT", f"/profile/{quote(bob.user_id)}/displayname", json={"displayname": "Robert"})
    renamed = await sliding(bob, body(lists, since), first["pos"])
    assert sticky_ids(renamed, room) == []
    since = renamed["extensions"][EXT]["next_batch"]
    await bob.ok("POST", f"/rooms/{quote(room)}/leave", json={})
    assert (await bob.join(room))[0] == 200
    rejoined = await sliding(bob, body(lists, since), renamed["pos"])
    assert sticky_ids(rejoined, room) == [sticky]
