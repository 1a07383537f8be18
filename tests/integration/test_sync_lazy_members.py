"""Lazy-loading /sync: the heroes' member events are in `state` with the summary, and the
member events a device already holds (redundant ones, `include_redundant_members: false`)
are left out, and only those."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]

LAZY = '{"room":{"timeline":{"limit":10},"state":{"lazy_load_members":true}}}'
# An initial sync whose timeline is bob's own join: alice's member event comes as a hero's.
FIRST = '{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}'
REDUNDANT = (
    '{"room":{"timeline":{"limit":10},"state":{"lazy_load_members":true,"include_redundant_members":true}}}'
)


def state_members(sync: dict[str, Any], room: str) -> dict[str, str]:
    """User ID -> member event ID of the room's `state` section."""
    joined = sync["rooms"]["join"][room]
    return {e["state_key"]: e["event_id"] for e in joined["state"]["events"] if e["type"] == "m.room.member"}


def bodies(sync: dict[str, Any], room: str) -> list[str]:
    return [e["content"].get("body") for e in sync["rooms"]["join"][room]["timeline"]["events"]]


async def two_in_a_room(make_user: MakeUser) -> tuple[RawClient, RawClient, str]:
    alice = await make_user("alice")
    bob = await make_user("bob")
    return alice, bob, await alice.room_with(bob)


async def rename_out_of_sight(alice: RawClient, room: str, name: str) -> str:
    """Alice's new member event, followed by more messages than LAZY's timeline holds (the
    next sync is limited, and carries the rename in `state`)."""
    body = await alice.ok(
        "PUT",
        f"/rooms/{room}/state/m.room.member/{alice.user_id}",
        json={"membership": "join", "displayname": name},
    )
    for i in range(12):
        await alice.send(room, f"{name} {i}", f"{name}-{i}")
    return str(body["event_id"])


async def test_the_heroes_member_events_come_with_the_summary(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    others = [await make_user(f"user{i}") for i in range(7)]
    room = await alice.room_with(*others)
    await others[6].send(room, "hi", "t1")
    sync = await alice.sync(filter=FIRST)
    joined = sync["rooms"]["join"][room]
    heroes = joined["summary"]["m.heroes"]
    assert len(heroes) == 5 and alice.user_id not in heroes
    # Alice, the sender, and the heroes; not the whole room.
    assert set(state_members(sync, room)) == {alice.user_id, others[6].user_id, *heroes}
    assert len(state_members(sync, room)) < 8


async def test_a_member_event_is_sent_once(make_user: MakeUser) -> None:
    alice, bob, room = await two_in_a_room(make_user)
    first = await bob.sync(filter=FIRST)
    assert alice.user_id in state_members(first, room)
    since = first["next_batch"]
    for body in ("one", "two"):
        await alice.send(room, body, body)
        sync = await bob.sync(since, filter=LAZY)
        assert bodies(sync, room) == [body]
        # Bob's client holds both member events: neither is sent again, and with no member
        # event the (unchanged) summary is left out too.
        assert state_members(sync, room) == {}
        assert "summary" not in sync["rooms"]["join"][room]
        since = sync["next_batch"]


async def test_a_changed_member_event_is_sent_again(make_user: MakeUser) -> None:
    alice, bob, room = await two_in_a_room(make_user)
    since = (await bob.sync(filter=FIRST))["next_batch"]
    renamed = await rename_out_of_sight(alice, room, "Alice Two")
    sync = await bob.sync(since, filter=LAZY)
    assert sync["rooms"]["join"][room]["timeline"]["limited"] is True
    assert state_members(sync, room) == {alice.user_id: renamed}


async def test_a_lost_response_is_not_counted(make_user: MakeUser) -> None:
    alice, bob, room = await two_in_a_room(make_user)
    since = (await bob.sync(filter=FIRST))["next_batch"]
    renamed = await rename_out_of_sight(alice, room, "Alice Two")
    lost = await bob.sync(since, filter=LAZY)
    assert state_members(lost, room) == {alice.user_id: renamed}
    # The client never saw that response and retries with its old token: it gets the member
    # event again, although the server has sent it once.
    retry = await bob.sync(since, filter=LAZY)
    assert state_members(retry, room) == {alice.user_id: renamed}
    # A sync from the retry's token shows the client has it.
    await alice.send(room, "after", "after")
    later = await bob.sync(retry["next_batch"], filter=LAZY)
    assert bodies(later, room) == ["after"]
    assert state_members(later, room) == {}


async def test_include_redundant_members_sends_them_every_time(make_user: MakeUser) -> None:
    alice, bob, room = await two_in_a_room(make_user)
    since = (await bob.sync(filter=FIRST))["next_batch"]
    for i in range(2):
        await alice.send(room, f"m{i}", f"t{i}")
        sync = await bob.sync(since, filter=REDUNDANT)
        # The sender's, and (as lazy-loading always adds it) bob's own.
        assert set(state_members(sync, room)) == {alice.user_id, bob.user_id}
        since = sync["next_batch"]


async def test_an_initial_sync_and_another_device_start_from_nothing(
    server: RunningServer, make_user: MakeUser
) -> None:
    alice, bob, room = await two_in_a_room(make_user)
    since = (await bob.sync(filter=FIRST))["next_batch"]
    await alice.send(room, "one", "t1")
    since = (await bob.sync(since, filter=LAZY))["next_batch"]
    renamed = await rename_out_of_sight(alice, room, "Alice Two")
    # Bob's other device has never been sent these member events.
    token, _ = await server.hs.auth.create_session(bob.user_id, None, None)
    other = RawClient(bob.session, bob.base_url, token, bob.user_id)
    other_sync = await other.sync(since, filter=LAZY)
    assert state_members(other_sync, room)[alice.user_id] == renamed
    assert bob.user_id in state_members(other_sync, room)
    # The first device gets it too ...
    assert state_members(await bob.sync(since, filter=LAZY), room)[alice.user_id] == renamed
    # ... then its client clears its store: an initial sync that does not carry alice's
    # member event itself ...
    await alice.send(room, "three", "t3")
    await bob.send(room, "from bob", "b1")
    lazy_one_without_heroes = (
        '{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true,"types":["m.room.create"]}}}'
    )
    initial = await bob.sync(filter=lazy_one_without_heroes)
    assert bodies(initial, room) == ["from bob"]
    assert state_members(initial, room) == {}
    # ... forgets what was sent before: the next sync carries alice's member event again.
    await alice.send(room, "four", "t4")
    after = await bob.sync(initial["next_batch"], filter=LAZY)
    assert bodies(after, room) == ["four"]
    assert state_members(after, room)[alice.user_id] == renamed
