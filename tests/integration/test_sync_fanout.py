"""Incremental /sync at scale: syncs of one stream window share room-level reads, per-user
work is gated on what changed, and every member still gets exactly their own view."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from sqlalchemy import event

from homeserver.storage.push import PushAction, PushActionStore
from homeserver.storage.sync_reads import WINDOW_ROWS
from homeserver.storage.unread import MAX_DELTA_GROUPS, Counts, UnreadCounts
from tests.integration.e2ee.fixtures import olm_user
from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]

FILTER = '{"room":{"timeline":{"limit":50},"state":{"lazy_load_members":true}},"presence":{"types":[]}}'


def count_queries(server: RunningServer) -> list[str]:
    seen: list[str] = []

    def before(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(server.hs.db.engine.sync_engine, "before_cursor_execute", before)
    return seen


async def test_members_share_the_window_but_see_their_own_view(
    server: RunningServer, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(preset="public_chat")
    others = [await make_user(f"user{i}") for i in range(4)]
    for u in others:
        assert (await u.join(room))[0] == 200
    everyone = [alice, *others]
    tokens = [(await u.sync(filter=FILTER))["next_batch"] for u in everyone]
    # A join (so that every sync carries the room's summary) and a message.
    late = await make_user("late")
    assert (await late.join(room))[0] == 200
    await alice.send(room, "hello all", "txn-1")
    syncs = [await u.sync(tokens[i], filter=FILTER) for i, u in enumerate(everyone)]
    for u, sync in zip(everyone, syncs, strict=True):
        joined = sync["rooms"]["join"][room]
        events = joined["timeline"]["events"]
        assert [e["type"] for e in events] == ["m.room.member", "m.room.message"]
        assert events[1]["content"]["body"] == "hello all"
        # Only the sending device sees its transaction ID, although the batch is shared.
        assert ("transaction_id" in events[1]["unsigned"]) == (u is alice)
        summary = joined["summary"]
        assert summary["m.joined_member_count"] == 6
        assert u.user_id not in summary["m.heroes"]
        assert len(summary["m.heroes"]) == 5
        assert joined["unread_notifications"]["notification_count"] == (0 if u is alice else 1)
        # The newcomer now shares a room with each of them.
        assert sync["device_lists"] == {"changed": [late.user_id], "left": []}
        assert sync["to_device"] == {"events": []}


async def test_incremental_sync_runs_few_queries(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    carol = await make_user("carol")
    room = await alice.create_room(preset="public_chat")
    for u in (bob, carol):
        assert (await u.join(room))[0] == 200
    tokens = [(await u.sync(filter=FILTER))["next_batch"] for u in (bob, carol)]
    await alice.send(room, "one", "t1")
    first = await bob.sync(tokens[0], filter=FILTER)
    assert first["rooms"]["join"][room]["timeline"]["events"]
    queries = count_queries(server)
    second = await carol.sync(tokens[1], filter=FILTER)
    assert second["rooms"]["join"][room]["timeline"]["events"]
    # Memberships with the per-user probe, and the unread counts; the room's reads (changed
    # rooms, timeline, summary, receipts, relations, device lists) were shared with bob's.
    assert len(queries) <= 2, queries
    queries.clear()
    empty = await carol.sync(second["next_batch"], filter=FILTER)
    assert empty["rooms"]["join"] == {}
    assert len(queries) <= 1, queries


async def test_a_woken_sync_asks_once_what_landed_in_its_window(
    server: RunningServer, make_user: MakeUser
) -> None:
    """One message in the window: the receipts, presence and device-list sections learn from
    the window's summary that they have nothing to read, and the relations section learns
    from the timeline's read; none runs a query of its own."""
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat")
    assert (await bob.join(room))[0] == 200
    plain = '{"room":{"timeline":{"limit":10}}}'
    since = (await bob.sync(filter=plain))["next_batch"]
    await alice.send(room, "one", "t1")
    queries = count_queries(server)
    sync = await bob.sync(since, filter=plain)
    assert [e["content"]["body"] for e in sync["rooms"]["join"][room]["timeline"]["events"]] == ["one"]
    gated = ("FROM receipts", "FROM presence", "FROM device_list_changes", "DISTINCT events.relates_to")
    own = [
        q for q in queries if q.startswith("SELECT") and any(t in q for t in gated) and "UNION ALL" not in q
    ]
    assert own == [], own
    # Memberships and probe, the window, the timeline (with its relations) and unread counts.
    assert len(queries) <= 4, queries


@pytest.mark.parametrize("window_rows", [WINDOW_ROWS, 1], ids=["summarised", "too-long-to-summarise"])
async def test_every_section_of_a_window_arrives(
    server: RunningServer, make_user: MakeUser, http: aiohttp.ClientSession, window_rows: int
) -> None:
    """Messages, a receipt, presence, a new member and a device-list change in one window all
    reach the sync, whether the window is summarised in one statement or (more rows than
    `window_rows`) each section asks for itself."""
    server.hs.sync.reads.window_rows = window_rows
    alice = await olm_user(server, http, "alice")
    bob = await make_user("bob")
    room = await bob.create_room(preset="public_chat")
    quiet = await bob.create_room(preset="public_chat")
    assert (await alice.raw.join(room))[0] == 200
    since = (await bob.sync())["next_batch"]
    first = await alice.raw.send(room, "one", "t1")
    await alice.raw.send(room, "two", "t2")
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "+1"}}
    await alice.raw.ok("PUT", f"/rooms/{quote(room)}/send/m.reaction/r1", json=reaction)
    await alice.raw.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(first)}", json={})
    await alice.raw.ok("PUT", f"/presence/{quote(alice.user_id)}/status", json={"presence": "unavailable"})
    await alice.upload_keys(one_time=1)
    carol = await make_user("carol")
    assert (await carol.join(quiet))[0] == 200
    sync = await bob.sync(since)
    joined = sync["rooms"]["join"]
    timeline = joined[room]["timeline"]["events"]
    assert [e["content"].get("body") for e in timeline] == ["one", "two", None]
    bundled = timeline[0]["unsigned"]["m.relations"]["m.annotation"]["chunk"]
    assert bundled == [{"type": "m.reaction", "key": "+1", "count": 1}]
    assert "m.relations" not in timeline[1]["unsigned"]
    receipts = [e for e in joined[room]["ephemeral"]["events"] if e["type"] == "m.receipt"]
    assert alice.user_id in receipts[0]["content"][first]["m.read"]
    assert [e["content"]["membership"] for e in joined[quiet]["timeline"]["events"]] == ["join"]
    presence = {e["sender"]: e["content"]["presence"] for e in sync["presence"]["events"]}
    assert presence.get(alice.user_id) == "unavailable"
    assert set(sync["device_lists"]["changed"]) == {alice.user_id, carol.user_id}
    again = await bob.sync(sync["next_batch"])
    assert again["rooms"]["join"] == {} and again["device_lists"] == {"changed": [], "left": []}


async def test_a_long_poll_with_nothing_new_parks_without_a_query(
    server: RunningServer, make_user: MakeUser
) -> None:
    """Coming back with the position of its last sync, while nothing has happened since, a
    long-poll parks at once: no computation, no statement, until it is woken or times out.
    It still counts as syncing for presence."""
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat")
    assert (await bob.join(room))[0] == 200
    since = (await bob.sync(filter=FILTER))["next_batch"]
    queries = count_queries(server)
    poll = asyncio.create_task(bob.sync(since, 10_000, filter=FILTER))
    await asyncio.sleep(0.3)
    assert not poll.done()
    assert queries == [], queries
    await alice.send(room, "wake up", "w1")
    woken = await asyncio.wait_for(poll, 5)
    events = woken["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"]["body"] for e in events] == ["wake up"]
    # Parked at once, the sync still says how the user wants to appear.
    poll = asyncio.create_task(
        bob.sync(woken["next_batch"], 10_000, filter=FILTER, set_presence="unavailable")
    )
    await asyncio.sleep(0.3)
    status = await alice.ok("GET", f"/presence/{quote(bob.user_id)}/status")
    assert status["presence"] == "unavailable"
    await alice.send(room, "bye", "w2")
    await asyncio.wait_for(poll, 5)


async def test_gated_sections_still_arrive(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat")
    assert (await bob.join(room))[0] == 200
    since = (await bob.sync(filter=FILTER))["next_batch"]
    await bob.ok("PUT", f"/user/{bob.user_id}/account_data/org.example.x", json={"a": 1})
    await bob.ok("PUT", "/pushrules/global/override/my.rule", json={"conditions": [], "actions": []})
    await bob.ok(
        "PUT",
        "/sendToDevice/m.test/tx1",
        json={"messages": {bob.user_id: {"*": {"hello": "world"}}}},
    )
    sync = await bob.sync(since, filter=FILTER)
    types = {e["type"] for e in sync["account_data"]["events"]}
    assert {"org.example.x", "m.push_rules"} <= types
    assert [e["content"] for e in sync["to_device"]["events"]] == [{"hello": "world"}]
    again = await bob.sync(sync["next_batch"], filter=FILTER)
    assert again["account_data"]["events"] == []
    assert again["to_device"]["events"] == []


async def test_kept_unread_counts_equal_a_fresh_count(server: RunningServer, make_user: MakeUser) -> None:
    """UnreadCounts.at adds the push actions of newer events to the counts it kept from its
    last call. After messages, threads, receipts (threaded, unthreaded, moved back) and push
    actions written after their event, it must answer as a fresh count does."""
    alice = await make_user("alice")
    bob = await make_user("bob")
    carol = await make_user("carol")
    room = await alice.create_room(preset="public_chat")
    quiet = await alice.create_room(preset="public_chat")
    for u in (bob, carol):
        assert (await u.join(room))[0] == 200
        assert (await u.join(quiet))[0] == 200
    rooms = [room, quiet, "!unknown:example.org"]
    kept = UnreadCounts(server.hs.db, keep_from=1)
    store = PushActionStore(server.hs.db)

    async def check() -> dict[str, dict[str, dict[str, Counts]]]:
        upto = server.hs.db.current_stream_id
        out = {}
        for user in (alice.user_id, bob.user_id, carol.user_id):
            out[user] = await kept.full(user, rooms, upto)
            assert await kept.at(user, rooms, upto) == out[user], user
            assert await store.unread_counts(user, rooms) == out[user]
        return out

    await check()
    root = await bob.send(room, "thread root", "r1")
    await check()
    for i in range(3):
        await bob.ok(
            "PUT",
            f"/rooms/{quote(room)}/send/m.room.message/th{i}",
            json={
                "msgtype": "m.text",
                "body": f"in thread {i}",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            },
        )
        await check()
    mention = await bob.send(room, f"hey {alice.user_id}", "m1")
    later = await bob.send(room, "after the mention", "m2")
    await bob.send(quiet, "elsewhere", "q1")
    counts = await check()
    assert counts[carol.user_id][room]["main"].highlights == 0
    assert counts[carol.user_id][room][root].notifications == 3
    assert counts[alice.user_id][room]["main"] == Counts(3, 1)
    assert len(kept) > 0
    await alice.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(mention)}", json={})
    assert (await check())[alice.user_id][room] == {"main": Counts(1, 0)}
    await carol.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(later)}", json={"thread_id": root})
    assert root not in (await check())[carol.user_id][room]
    await alice.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(later)}", json={})
    assert room not in (await check())[alice.user_id]
    # A receipt moved back counts the events after it again.
    await alice.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(root)}", json={})
    assert (await check())[alice.user_id][room] == {"main": Counts(2, 1), root: Counts(3, 0)}
    # Push actions written after their event's own transaction (state and remote events),
    # for a user whose count is kept.
    topic = await alice.ok("PUT", f"/rooms/{quote(room)}/state/m.room.topic", json={"topic": "t"})
    before = (await check())[carol.user_id][room]["main"]
    stored = await server.hs.events.get_event(topic["event_id"])
    assert stored is not None
    event_id = stored.event.event_id
    late = PushAction(carol.user_id, event_id, room, "main", stored.stream_id, True, ["notify"], 0)
    await store.add([late])
    after = (await check())[carol.user_id][room]["main"]
    assert after == Counts(before.notifications + 1, before.highlights + 1)


async def test_kept_unread_counts_of_many_rooms_cost_few_statements(
    server: RunningServer, make_user: MakeUser
) -> None:
    """Rooms whose counts were kept at different positions (counted in different syncs) are
    checked in at most MAX_DELTA_GROUPS statements, plus one fresh count for the rest."""
    alice = await make_user("alice")
    bob = await make_user("bob")
    rooms = [await alice.create_room(preset="public_chat") for _ in range(5)]
    for room in rooms:
        assert (await bob.join(room))[0] == 200
    kept = UnreadCounts(server.hs.db, keep_from=1)
    for i, room in enumerate(rooms):
        # Each room counted alone, at its own position.
        await alice.send(room, "hello", f"h{i}")
        await kept.at(bob.user_id, [room], server.hs.db.current_stream_id)
    assert len(kept) == len(rooms)
    await alice.send(rooms[0], "again", "a0")
    upto = server.hs.db.current_stream_id
    queries = count_queries(server)
    got = await kept.at(bob.user_id, rooms, upto)
    assert len(queries) <= MAX_DELTA_GROUPS + 1, queries
    assert got == await kept.full(bob.user_id, rooms, upto)
    assert got[rooms[0]]["main"].notifications == 2


async def test_lazy_initial_sync_state_is_the_full_state_filtered(make_user: MakeUser) -> None:
    """An initial lazy-loading sync loads only the members it sends; it must send exactly what
    filtering the full state at the timeline's start would give."""
    alice = await make_user("alice")
    room = await alice.create_room(preset="public_chat", name="Before")
    users = [await make_user(f"user{i}") for i in range(5)]
    for u in users:
        assert (await u.join(room))[0] == 200
    await users[0].send(room, "early", "e1")
    await users[1].ok(
        "PUT",
        f"/rooms/{quote(room)}/state/m.room.member/{quote(users[1].user_id)}",
        json={"membership": "join", "displayname": "Renamed"},
    )
    await alice.ok("PUT", f"/rooms/{quote(room)}/state/m.room.name", json={"name": "After"})
    await alice.ok("POST", f"/rooms/{quote(room)}/kick", json={"user_id": users[2].user_id})
    await users[3].send(room, "late", "l1")
    await users[1].send(room, "later", "l2")
    for limit in (1, 2, 3, 4, 6, 50):
        plain = await users[4].sync(filter=f'{{"room":{{"timeline":{{"limit":{limit}}}}}}}')
        lazy = await users[4].sync(
            filter=f'{{"room":{{"timeline":{{"limit":{limit}}},"state":{{"lazy_load_members":true}}}}}}'
        )
        p, z = plain["rooms"]["join"][room], lazy["rooms"]["join"][room]
        timeline = z["timeline"]["events"]
        assert [e["event_id"] for e in timeline] == [e["event_id"] for e in p["timeline"]["events"]]
        senders = {e["sender"] for e in timeline} | {users[4].user_id}
        expected = {
            e["event_id"]
            for e in p["state"]["events"]
            if e["type"] != "m.room.member" or e["state_key"] in senders
        }
        have = {
            e["state_key"]
            for e in p["state"]["events"] + timeline
            if e["type"] == "m.room.member" and e["state_key"] in senders
        }
        got = {e["event_id"] for e in z["state"]["events"]}
        # Senders whose member event is neither in that state nor the timeline come from the
        # current state (and so do in both paths).
        extra = {
            e["event_id"]
            for e in z["state"]["events"]
            if e["type"] == "m.room.member" and e["state_key"] not in have
        }
        assert got - extra == expected, limit
        # Besides the senders, the heroes' member events are sent (the spec requires them).
        # (or come in the timeline).
        heroes = set(z["summary"]["m.heroes"])
        members = {e["state_key"] for e in z["state"]["events"] if e["type"] == "m.room.member"}
        in_timeline = {e["state_key"] for e in timeline if e["type"] == "m.room.member"}
        assert heroes <= members | in_timeline
        assert members <= senders | heroes


async def test_long_polling_members_get_every_message_exactly_once(make_user: MakeUser) -> None:
    """Members long-poll while messages, typing, receipts and account data changes arrive:
    with reads shared between their syncs, each still gets every message once, in order."""
    sender = await make_user("sender")
    room = await sender.create_room(preset="public_chat")
    members = [await make_user(f"member{i}") for i in range(12)]
    for m in members:
        assert (await m.join(room))[0] == 200
    got: dict[str, list[str]] = {m.user_id: [] for m in members}
    stop = asyncio.Event()

    async def listen(m: RawClient) -> None:
        since = (await m.sync(filter=FILTER))["next_batch"]
        while not stop.is_set():
            sync = await m.sync(since, 1000, filter=FILTER)
            since = sync["next_batch"]
            for e in sync["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", []):
                if e["type"] == "m.room.message":
                    got[m.user_id].append(e["event_id"])

    sent: list[str] = []

    async def noise() -> None:
        i = 0
        while not stop.is_set():
            m = members[i % len(members)]
            i += 1
            if i % 3 == 0:
                await m.ok(
                    "PUT",
                    f"/rooms/{quote(room)}/typing/{quote(m.user_id)}",
                    json={"typing": True, "timeout": 300},
                )
            elif i % 3 == 1 and sent:
                await m.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(sent[-1])}", json={})
            else:
                await m.ok("PUT", f"/user/{quote(m.user_id)}/account_data/org.example.n", json={"i": i})
            await asyncio.sleep(0.005)

    listeners = [asyncio.create_task(listen(m)) for m in members]
    await asyncio.sleep(0.5)
    noisy = asyncio.create_task(noise())
    for i in range(15):
        sent.append(await sender.send(room, f"message {i}", f"s{i}"))
        await asyncio.sleep(0.02 * (i % 3))
    await asyncio.sleep(1.5)
    stop.set()
    await noisy
    await asyncio.gather(*listeners)
    assert all(ids == sent for ids in got.values()), {u: len(ids) for u, ids in got.items()}
