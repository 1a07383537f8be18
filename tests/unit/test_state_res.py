"""State resolution v2 (room v11, also v10) and v2.1 (room v12) on small
forked rooms built from real signed events."""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection
from typing import Any

import pytest

from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.testing import RoomSim
from homeserver.state import StateMap, get_auth_chain, resolve_state

V10, V11, V12 = RoomVersions.V10, RoomVersions.V11, RoomVersions.V12
VERSIONS = [V10, V11, V12]
ALICE, BOB, CAROL, DAVE = "@alice:a.example", "@bob:b.example", "@carol:c.example", "@dave:d.example"
PL: tuple[str, str] = ("m.room.power_levels", "")
TOPIC: tuple[str, str] = ("m.room.topic", "")


class Source:
    """In-memory EventSource that returns events in a shuffled order and
    counts calls."""

    def __init__(self, room: RoomSim, seed: int = 0) -> None:
        self.room = room
        self.calls = 0
        self._rng = random.Random(seed)

    async def get_events(self, event_ids: Collection[str]) -> dict[str, Event]:
        self.calls += 1
        ids = [i for i in event_ids if i in self.room.events]
        self._rng.shuffle(ids)
        return {i: self.room.events[i] for i in ids}


def users(rv: RoomVersion, **levels: int) -> dict[str, Any]:
    """Power levels content; the creator (alice) is listed only before v12."""
    table = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}
    content = {table[name]: level for name, level in levels.items()}
    if rv.privileged_creators:
        content.pop(ALICE, None)
    else:
        content.setdefault(ALICE, 100)
    return {"users": content}


def base_room(rv: RoomVersion) -> RoomSim:
    """Alice creates a public room; bob (50) and carol (0) join."""
    room = RoomSim(rv)
    room.member(ALICE, "join")
    room.send("m.room.power_levels", ALICE, users(rv, bob=50), "")
    room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    room.member(BOB, "join")
    room.member(CAROL, "join")
    return room


async def resolve(room: RoomSim, *tips: Event, seed: int = 0) -> StateMap:
    return await resolve_state(
        room.room_version, [room.state_ids(room.state_after[t.event_id]) for t in tips], Source(room, seed)
    )


@pytest.mark.parametrize("rv", VERSIONS)
async def test_no_conflict_returns_unconflicted_without_fetching(rv: RoomVersion) -> None:
    room = base_room(rv)
    state = room.state_ids()
    source = Source(room)
    assert await resolve_state(rv, [state, dict(state)], source) == state
    assert source.calls == 0
    assert await resolve_state(rv, [], source) == {}


@pytest.mark.parametrize("rv", VERSIONS)
async def test_ban_beats_join(rv: RoomVersion) -> None:
    room = base_room(rv)
    fork = room.latest[0]
    ban = room.send("m.room.member", BOB, {"membership": "ban"}, DAVE, prev=[fork])
    join = room.send("m.room.member", DAVE, {"membership": "join"}, DAVE, prev=[fork])
    assert join.origin_server_ts > ban.origin_server_ts
    resolved = await resolve(room, ban, join)
    assert resolved[("m.room.member", DAVE)] == ban.event_id
    # ...and the same with the join sent first
    join2 = room.send("m.room.member", DAVE, {"membership": "join"}, DAVE, prev=[fork], ts=10)
    assert (await resolve(room, join2, ban))[("m.room.member", DAVE)] == ban.event_id


@pytest.mark.parametrize("rv", VERSIONS)
async def test_demotion_beats_ban_by_demoted_user(rv: RoomVersion) -> None:
    """Alice (more power) demotes bob while bob bans carol: the demotion is
    ordered first, so bob's ban fails."""
    room = base_room(rv)
    fork = room.latest[0]
    carol_join = room.state[("m.room.member", CAROL)]
    demote = room.send("m.room.power_levels", ALICE, users(rv, bob=0), "", prev=[fork])
    ban = room.send("m.room.member", BOB, {"membership": "ban"}, CAROL, prev=[fork])
    resolved = await resolve(room, demote, ban)
    assert resolved[PL] == demote.event_id
    assert resolved[("m.room.member", CAROL)] == carol_join.event_id


@pytest.mark.parametrize("rv", VERSIONS)
async def test_ban_vs_power_levels(rv: RoomVersion) -> None:
    """Synapse's "ban vs pl" situation: alice bans bob on one branch, bob
    re-sends power levels on the other; the ban wins and bob's PL is dropped."""
    room = base_room(rv)
    pa = room.send("m.room.power_levels", ALICE, {**users(rv, bob=50), "events": {"m.x": 1}}, "")
    ma = room.member(ALICE, "join", content={"displayname": "Alice"})
    mb = room.member(BOB, "ban", sender=ALICE)
    pb = room.send(
        "m.room.power_levels", BOB, {**users(rv, bob=50), "events": {"m.x": 2}}, "", prev=[pa.event_id]
    )
    resolved = await resolve(room, mb, pb)
    assert resolved[PL] == pa.event_id
    assert resolved[("m.room.member", ALICE)] == ma.event_id
    assert resolved[("m.room.member", BOB)] == mb.event_id


@pytest.mark.parametrize("rv", VERSIONS)
async def test_topic_conflict_resolved_by_mainline(rv: RoomVersion) -> None:
    """The topic sent under the newer power levels wins even though the other
    topic has a later timestamp."""
    room = base_room(rv)
    fork = room.latest[0]
    pa1 = room.send(
        "m.room.power_levels", ALICE, {**users(rv, bob=50), "events": {"m.x": 1}}, "", prev=[fork]
    )
    t1 = room.send("m.room.topic", BOB, {"topic": "one"}, "", prev=[pa1.event_id])
    t2 = room.send("m.room.topic", BOB, {"topic": "two"}, "", prev=[fork])
    assert t2.origin_server_ts > t1.origin_server_ts
    for tips in itertools.permutations([t1, t2]):
        resolved = await resolve(room, *tips)
        assert resolved[TOPIC] == t1.event_id
        assert resolved[PL] == pa1.event_id


@pytest.mark.parametrize("rv", VERSIONS)
async def test_same_mainline_topics_ordered_by_timestamp(rv: RoomVersion) -> None:
    room = base_room(rv)
    fork = room.latest[0]
    early = room.send("m.room.topic", BOB, {"topic": "early"}, "", prev=[fork], ts=50_000)
    late = room.send("m.room.topic", ALICE, {"topic": "late"}, "", prev=[fork], ts=60_000)
    assert (await resolve(room, late, early))[TOPIC] == late.event_id


@pytest.mark.parametrize("rv", VERSIONS)
async def test_join_rules_change_blocks_concurrent_join(rv: RoomVersion) -> None:
    room = base_room(rv)
    fork = room.latest[0]
    jr = room.send("m.room.join_rules", ALICE, {"join_rule": "invite"}, "", prev=[fork])
    join = room.send("m.room.member", DAVE, {"membership": "join"}, DAVE, prev=[fork])
    resolved = await resolve(room, jr, join)
    assert resolved[("m.room.join_rules", "")] == jr.event_id
    assert ("m.room.member", DAVE) not in resolved


@pytest.mark.parametrize("rv", VERSIONS)
async def test_unconflicted_state_is_kept(rv: RoomVersion) -> None:
    """Bob's topic predates the fork, so it survives even though bob is
    demoted on one branch and could no longer set it."""
    room = base_room(rv)
    topic = room.send("m.room.topic", BOB, {"topic": "kept"}, "")
    name = room.send("m.room.name", ALICE, {"name": "Room"}, "")
    fork = room.latest[0]
    demote = room.send("m.room.power_levels", ALICE, users(rv, bob=0), "", prev=[fork])
    leave = room.member(CAROL, "leave", prev=[fork])
    resolved = await resolve(room, demote, leave)
    assert resolved[TOPIC] == topic.event_id
    assert resolved[("m.room.name", "")] == name.event_id
    assert resolved[PL] == demote.event_id
    assert resolved[("m.room.member", CAROL)] == leave.event_id
    assert resolved[("m.room.create", "")] == room.create.event_id


@pytest.mark.parametrize("rv", [V11, V12])
async def test_creator_power_in_ordering(rv: RoomVersion) -> None:
    """Carol is made an admin (100) and bans bob while alice (the creator)
    demotes carol.  In v12 alice's infinite power lets the demotion through
    and sorts it first, so carol's ban fails; in v11 alice (100) may not
    demote an equal, so the ban stands."""
    room = base_room(rv)
    room.send("m.room.power_levels", ALICE, users(rv, bob=50, carol=100), "")
    fork = room.latest[0]
    bob_join = room.state[("m.room.member", BOB)]
    demote = room.send("m.room.power_levels", ALICE, users(rv, bob=50, carol=0), "", prev=[fork], check=False)
    ban = room.send("m.room.member", CAROL, {"membership": "ban"}, BOB, prev=[fork])
    resolved = await resolve(room, demote, ban)
    if rv.privileged_creators:
        assert resolved[PL] == demote.event_id
        assert resolved[("m.room.member", BOB)] == bob_join.event_id
    else:
        assert resolved[PL] == room.state_after[fork][PL].event_id
        assert resolved[("m.room.member", BOB)] == ban.event_id


@pytest.mark.parametrize("rv", VERSIONS)
async def test_determinism_across_input_and_fetch_order(rv: RoomVersion) -> None:
    room = base_room(rv)
    fork = room.latest[0]
    tips = [
        room.send("m.room.topic", BOB, {"topic": "a"}, "", prev=[fork]),
        room.send("m.room.power_levels", ALICE, users(rv, bob=0, carol=10), "", prev=[fork]),
        room.send("m.room.member", BOB, {"membership": "ban"}, CAROL, prev=[fork]),
        room.send("m.room.name", CAROL, {"name": "x"}, "", prev=[fork], check=False),
        room.send("m.room.member", DAVE, {"membership": "join"}, DAVE, prev=[fork]),
    ]
    results = []
    for seed, order in enumerate(itertools.permutations(tips)):
        if seed % 7:
            continue  # a spread of the 120 orders keeps the test fast
        results.append(await resolve(room, *order, seed=seed))
    assert all(r == results[0] for r in results)
    assert list(results[0]) == sorted(results[0])
    final = results[0]
    assert final[PL] == tips[1].event_id
    assert final[("m.room.member", CAROL)] == room.state_after[fork][("m.room.member", CAROL)].event_id
    assert final[("m.room.member", DAVE)] == tips[4].event_id
    assert ("m.room.name", "") not in final  # carol lacked the power on her branch


@pytest.mark.parametrize("rv", VERSIONS)
async def test_get_auth_chain(rv: RoomVersion) -> None:
    room = base_room(rv)
    msg = room.send("m.room.message", CAROL, {"body": "hi"})
    chain = await get_auth_chain([msg.event_id], Source(room))
    expected = {room.state[PL].event_id, room.state[("m.room.member", CAROL)].event_id}
    assert expected <= chain and msg.event_id not in chain
    assert (room.create.event_id in chain) is not rv.room_id_is_create_event_hash
    assert room.state[("m.room.join_rules", "")].event_id in chain  # via carol's join
    assert await get_auth_chain(["$unknown"], Source(room)) == set()
