"""/sync with `use_state_after` (MSC4222, spec v1.16): the state at the end of the timeline,
its own state changes included, in `state_after` instead of `state` (under the unstable name
for the unstable parameter, which matrix-js-sdk sends on every sync)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from tests.support.http import RawClient

MakeUser = Callable[[str], Awaitable[RawClient]]
UNSTABLE = {"org.matrix.msc4222.use_state_after": "true"}
LIMIT_2 = '{"room":{"timeline":{"limit":2}}}'
LAZY = '{"room":{"timeline":{"limit":3},"state":{"lazy_load_members":true}}}'


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["name"] for e in events if e["type"] == "m.room.name"]


async def rename(client: RawClient, room: str, name: str) -> None:
    await client.ok("PUT", f"/rooms/{quote(room)}/state/m.room.name", json={"name": name})


async def test_initial_sync_has_the_state_after_the_timeline(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(name="First")
    await alice.send(room, "hello", "t1")
    await rename(alice, room, "Second")  # the last timeline event
    classic = (await alice.sync(filter=LIMIT_2))["rooms"]["join"][room]
    assert names(classic["state"]["events"]) == ["First"] and "state_after" not in classic
    after = (await alice.sync(filter=LIMIT_2, use_state_after="true"))["rooms"]["join"][room]
    assert "state" not in after
    assert names(after["state_after"]["events"]) == ["Second"]
    assert {e["type"] for e in after["state_after"]["events"]} >= {"m.room.create", "m.room.member"}
    params = {"timeout": "0", "filter": LIMIT_2, **UNSTABLE}
    unstable = (await alice.ok("GET", "/sync", params=params))["rooms"]["join"][room]
    assert names(unstable["org.matrix.msc4222.state_after"]["events"]) == ["Second"]
    assert "state" not in unstable and "state_after" not in unstable


async def test_incremental_syncs_include_the_timelines_own_changes(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(name="One")
    since = (await alice.sync(filter=LIMIT_2))["next_batch"]
    # Not limited: the rename is in the timeline, and in state_after too.
    await rename(alice, room, "Two")
    classic = (await alice.sync(since, filter=LIMIT_2))["rooms"]["join"][room]
    assert classic["state"]["events"] == []
    after = (await alice.sync(since, filter=LIMIT_2, use_state_after="true"))["rooms"]["join"][room]
    assert names(after["state_after"]["events"]) == ["Two"] and not after["timeline"]["limited"]
    # Nothing of state changed: state_after is empty.
    since = (await alice.sync(since, filter=LIMIT_2))["next_batch"]
    await alice.send(room, "just talk", "t2")
    quiet = (await alice.sync(since, filter=LIMIT_2, use_state_after="true"))["rooms"]["join"][room]
    assert quiet["state_after"]["events"] == [] and "state" not in quiet
    # Limited (a gap): a topic set in the gap, and a rename at the end of the timeline.
    since = (await alice.sync(since, filter=LIMIT_2))["next_batch"]
    await alice.ok("PUT", f"/rooms/{quote(room)}/state/m.room.topic", json={"topic": "gap"})
    for i in range(3):
        await alice.send(room, f"filler {i}", f"f{i}")
    await rename(alice, room, "Three")
    classic = (await alice.sync(since, filter=LIMIT_2))["rooms"]["join"][room]
    assert classic["timeline"]["limited"]
    assert {e["type"] for e in classic["state"]["events"]} == {"m.room.topic"}
    after = (await alice.sync(since, filter=LIMIT_2, use_state_after="true"))["rooms"]["join"][room]
    assert {e["type"] for e in after["state_after"]["events"]} == {"m.room.topic", "m.room.name"}
    assert names(after["state_after"]["events"]) == ["Three"]


async def test_lazy_members_of_the_timeline_are_in_state_after(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat")
    since = (await alice.sync(filter=LAZY))["next_batch"]
    assert (await bob.join(room))[0] == 200
    await bob.send(room, "hi all", "b1")
    after = (await alice.sync(since, filter=LAZY, use_state_after="true"))["rooms"]["join"][room]
    members = [e for e in after["state_after"]["events"] if e["type"] == "m.room.member"]
    # Bob's join is in the timeline; state_after must have it as well.
    assert [m["state_key"] for m in members] == [bob.user_id]
