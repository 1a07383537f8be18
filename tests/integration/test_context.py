"""GET /rooms/{roomId}/context/{eventId}: the events around one, filtered, and the room's
state at the last event returned (with lazy-loading, only the senders' member events)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from tests.support.http import RawClient

MakeUser = Callable[[str], Awaitable[RawClient]]


async def context(
    client: RawClient, room: str, event_id: str, limit: int, event_filter: dict[str, Any] | None = None
) -> Any:
    params = {"limit": str(limit)}
    if event_filter is not None:
        params["filter"] = json.dumps(event_filter)
    return await client.ok("GET", f"/rooms/{quote(room)}/context/{quote(event_id)}", params=params)


def state_of(body: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {e["state_key"]: e["content"] for e in body["state"] if e["type"] == type_}


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"].get("body", e["type"]) for e in events]


async def test_state_is_the_state_at_the_last_event_returned(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    room = await alice.create_room(name="Before")
    middle = await alice.send(room, "middle", "t1")
    await alice.ok("PUT", f"/rooms/{quote(room)}/state/m.room.name", json={"name": "After"})
    just_the_event = await context(alice, room, middle, 0)
    assert just_the_event["event"]["event_id"] == middle
    assert state_of(just_the_event, "m.room.name")[""]["name"] == "Before"
    around = await context(alice, room, middle, 4)
    assert bodies(around["events_after"]) == ["m.room.name"]
    assert state_of(around, "m.room.name")[""]["name"] == "After"


async def test_the_filter_applies_to_the_events_around_and_the_state(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.room_with(bob, name="Room")
    await alice.send(room, "a1", "a1")
    await bob.send(room, "b1", "b1")
    middle = await alice.send(room, "a2", "a2")
    await bob.send(room, "b2", "b2")
    await alice.send(room, "a3", "a3")
    only_alice = await context(alice, room, middle, 6, {"senders": [alice.user_id]})
    # (The limit is applied first: three events each side, then the filter.)
    assert bodies(only_alice["events_before"]) == ["a1"]
    assert bodies(only_alice["events_after"]) == ["a3"]
    assert all(e["sender"] == alice.user_id for e in only_alice["state"])
    messages = await context(alice, room, middle, 6, {"types": ["m.room.message"]})
    assert bodies(messages["events_before"])[:2] == ["b1", "a1"]
    assert messages["state"] == []
    # The event itself is returned whatever the filter says.
    none = await context(alice, room, middle, 6, {"types": ["m.room.topic"]})
    assert none["event"]["event_id"] == middle
    assert none["events_before"] == [] and none["events_after"] == []
    status, body = await alice.request(
        "GET", f"/rooms/{quote(room)}/context/{quote(middle)}", params={"filter": "{not json"}
    )
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")


async def test_lazy_loading_sends_only_the_senders_members(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    others = [await make_user(f"user{i}") for i in range(5)]
    room = await alice.room_with(*others)
    middle = await others[0].send(room, "hello", "t1")
    await others[1].send(room, "hi", "t2")
    lazy = await context(alice, room, middle, 2, {"lazy_load_members": True})
    senders = {e["sender"] for e in [lazy["event"], *lazy["events_before"], *lazy["events_after"]]}
    assert set(state_of(lazy, "m.room.member")) == senders
    assert others[1].user_id in senders
    assert not senders & {others[2].user_id, others[3].user_id}
    # Without lazy-loading: every member, as the room stood at the last event returned.
    full = await context(alice, room, middle, 2)
    assert set(state_of(full, "m.room.member")) == {alice.user_id, *(o.user_id for o in others)}
    assert state_of(full, "m.room.create")
