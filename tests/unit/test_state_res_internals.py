"""Building blocks of state resolution: auth-DAG walks, the conflicted state
subgraph, both orderings, and a case where v2 and v2.1 disagree."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.testing import RoomSim
from homeserver.state import resolve_state
from homeserver.state.auth_chain import EventFetcher
from homeserver.state.ordering import mainline_order, reverse_topological_power_order

RV = RoomVersions.V11
ALICE, BOB = "@alice:a.example", "@bob:b.example"


def fake(event_id: str, auth: list[str], *, ts: int = 0, type: str = "m.x", sender: str = ALICE) -> Event:
    """A bare event with a chosen ID (hashes/signatures are irrelevant here)."""
    pdu = {
        "type": type, "state_key": "", "sender": sender, "room_id": "!r:a.example", "content": {},
        "auth_events": auth, "prev_events": [], "depth": 1, "origin_server_ts": ts,
    }  # fmt: skip
    return Event(pdu, RV, event_id=event_id)


class DictSource:
    def __init__(self, events: list[Event]) -> None:
        self.events = {e.event_id: e for e in events}

    async def get_events(self, event_ids: Collection[str]) -> dict[str, Event]:
        return {i: self.events[i] for i in event_ids if i in self.events}


async def loaded(events: list[Event]) -> EventFetcher:
    fetcher = EventFetcher(DictSource(events))
    await fetcher.load_auth_closure([e.event_id for e in events])
    return fetcher


async def test_closure_and_conflicted_subgraph() -> None:
    #   $A <- $B <- $C <- $D      $B <- $E (side branch)     $F isolated
    events = [
        fake("$A", []), fake("$B", ["$A"]), fake("$C", ["$B"]), fake("$D", ["$C", "$missing"]),
        fake("$E", ["$B"]), fake("$F", []),
    ]  # fmt: skip
    fetcher = await loaded(events)
    assert fetcher.closure(["$D"], include_starts=False) == {"$A", "$B", "$C"}
    assert fetcher.closure(["$D"], include_starts=True) == {"$A", "$B", "$C", "$D"}
    # Paths between conflicted $D and $B: $D, $C, $B (not $A below, not $E beside).
    assert fetcher.conflicted_subgraph({"$D", "$B"}) == {"$B", "$C", "$D"}
    assert fetcher.conflicted_subgraph({"$D", "$E"}) == {"$D", "$E"}
    assert fetcher.conflicted_subgraph({"$D", "$A", "$F"}) == {"$A", "$B", "$C", "$D", "$F"}
    assert fetcher.nearest_ancestors_in("$D", {"$B", "$A"}) == {"$B"}


async def test_cycles_do_not_hang() -> None:
    fetcher = await loaded([fake("$X", ["$Y"]), fake("$Y", ["$X"])])
    assert fetcher.closure(["$X"], include_starts=False) == {"$X", "$Y"}
    assert "$X" in fetcher.conflicted_subgraph({"$X"})
    assert sorted(reverse_topological_power_order({"$X", "$Y"}, fetcher, None)) == ["$X", "$Y"]


async def test_events_from_other_rooms_are_ignored() -> None:
    other = Event({**fake("$O", []).pdu, "room_id": "!other:a.example"}, RV, event_id="$O")
    fetcher = EventFetcher(DictSource([fake("$A", ["$O"]), other]), room_id="!r:a.example")
    await fetcher.load_auth_closure(["$A"])
    assert fetcher.get("$O") is None and fetcher.auth_ids("$A") == []


async def test_reverse_topological_order_tie_breaks() -> None:
    # No power levels anywhere: every sender has power 0 except the creator
    # (100), who is nobody here - so ts then event ID decide; parents first.
    events = [
        fake("$root", [], ts=50), fake("$b", ["$root"], ts=5), fake("$a", ["$root"], ts=5),
        fake("$c", ["$root"], ts=1), fake("$child", ["$c"], ts=0),
    ]  # fmt: skip
    fetcher = await loaded(events)
    order = reverse_topological_power_order({e.event_id for e in events}, fetcher, None)
    assert order == ["$root", "$c", "$child", "$a", "$b"]


async def test_mainline_order() -> None:
    pl = "m.room.power_levels"
    events = [
        fake("$P0", [], type=pl), fake("$P1", ["$P0"], type=pl), fake("$P2", ["$P1"], type=pl),
        fake("$x_on_p2", ["$P2"], ts=1), fake("$y_on_p1", ["$P1"], ts=9), fake("$z_on_p0", ["$P0"], ts=9),
        fake("$w_none", [], ts=99), fake("$v_on_p1_too", ["$P1"], ts=9),
    ]  # fmt: skip
    fetcher = await loaded(events)
    ids = ["$x_on_p2", "$y_on_p1", "$z_on_p0", "$w_none", "$v_on_p1_too"]
    assert mainline_order(ids, "$P2", fetcher) == [
        "$w_none",
        "$z_on_p0",
        "$v_on_p1_too",
        "$y_on_p1",
        "$x_on_p2",
    ]
    # Without a resolved power levels event only ts and ID matter.
    assert mainline_order(ids, None, fetcher) == [
        "$x_on_p2",
        "$v_on_p1_too",
        "$y_on_p1",
        "$z_on_p0",
        "$w_none",
    ]


@pytest.mark.parametrize("version", [RoomVersions.V11, RoomVersions.V12])
async def test_v2_uses_unconflicted_state_v21_does_not(version: RoomVersion) -> None:
    """Bob changes the join rules and then leaves; a second state set already
    has his leave but still the old join rules.  v2 authorises bob's join
    rules change against the unconflicted state, where bob has left, and
    drops it; v2.1 starts from empty state, falls back to the change's own
    auth events (bob joined) and keeps it."""
    room = RoomSim(version)
    room.member(ALICE, "join")
    levels = {BOB: 50} if version.privileged_creators else {ALICE: 100, BOB: 50}
    room.send("m.room.power_levels", ALICE, {"users": levels}, "")
    jr0 = room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    room.member(BOB, "join")
    fork = room.latest[0]
    change = room.send("m.room.join_rules", BOB, {"join_rule": "invite"}, "", prev=[fork])
    leave = room.member(BOB, "leave", prev=[change.event_id])
    s1 = room.state_ids(room.state_after[leave.event_id])
    s2 = {**room.state_ids(room.state_after[fork]), ("m.room.member", BOB): leave.event_id}
    resolved = await resolve_state(version, [s1, s2], DictSource(list(room.events.values())))
    expected = change if version.state_res == "v2.1" else jr0
    assert resolved[("m.room.join_rules", "")] == expected.event_id
    assert resolved[("m.room.member", BOB)] == leave.event_id


async def test_state_from_another_room_is_ignored() -> None:
    room, other = RoomSim(RV), RoomSim(RV, room_localpart="other")
    for sim in (room, other):
        sim.member(ALICE, "join")
        sim.send("m.room.power_levels", ALICE, {"users": {ALICE: 100}}, "")
    foreign_topic = other.send("m.room.topic", ALICE, {"topic": "elsewhere"}, "")
    s1 = {**room.state_ids(), ("m.room.topic", ""): foreign_topic.event_id}
    s2 = room.state_ids()
    source = DictSource([*room.events.values(), *other.events.values()])
    resolved = await resolve_state(RV, [s1, s2], source)
    assert ("m.room.topic", "") not in resolved
    assert resolved == room.state_ids()
