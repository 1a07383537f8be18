"""The local public room directory: every field of a published room, ordering by members,
paging and search (read in bulk: homeserver/handlers/room_directory.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from tests.support.http import RawClient

MakeUser = Callable[[str], Awaitable[RawClient]]


async def test_published_rooms_carry_their_state(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    carol = await make_user("carol")
    busy = await alice.create_room(
        preset="public_chat",
        visibility="public",
        name="Busy",
        topic="lots going on",
        room_alias_name="busy",
        creation_content={"type": "m.space"},
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}},
            {"type": "m.room.guest_access", "content": {"guest_access": "can_join"}},
            {"type": "m.room.avatar", "content": {"url": "mxc://example.org/abc"}},
        ],
    )
    for member in (bob, carol):
        assert (await member.join(busy))[0] == 200
    quiet = await bob.create_room(preset="public_chat", visibility="public", name="Quiet")
    await carol.create_room(preset="public_chat", name="Unlisted")
    knock = await carol.create_room(visibility="public", name="Knock only")
    await carol.ok("PUT", f"/rooms/{quote(knock)}/state/m.room.join_rules/", json={"join_rule": "knock"})

    listed = await alice.ok("GET", "/publicRooms")
    assert listed["total_room_count_estimate"] == 3
    first = listed["chunk"][0]
    expected: dict[str, Any] = {
        "room_id": busy,
        "name": "Busy",
        "topic": "lots going on",
        "canonical_alias": f"#busy:{alice.user_id.split(':', 1)[1]}",
        "avatar_url": "mxc://example.org/abc",
        "room_type": "m.space",
        "num_joined_members": 3,
        "world_readable": True,
        "guest_can_join": True,
        "join_rule": "public",
    }
    assert first == expected  # the most members first
    by_name = {r["name"]: r for r in listed["chunk"]}
    assert set(by_name) == {"Busy", "Quiet", "Knock only"}
    assert by_name["Quiet"]["room_id"] == quiet and by_name["Quiet"]["world_readable"] is False
    assert by_name["Knock only"]["join_rule"] == "knock"
    # Paging walks the same order; a search matches names, topics and aliases.
    one = await alice.ok("GET", "/publicRooms", params={"limit": "1"})
    two = await alice.ok("GET", "/publicRooms", params={"limit": "1", "since": one["next_batch"]})
    assert [one["chunk"][0]["room_id"], two["chunk"][0]["room_id"]] == [
        r["room_id"] for r in listed["chunk"][:2]
    ]
    assert two["prev_batch"] == "0"
    found = await alice.ok("POST", "/publicRooms", json={"filter": {"generic_search_term": "GOING"}})
    assert [r["room_id"] for r in found["chunk"]] == [busy]
    status, body = await alice.request("POST", "/publicRooms", json={"limit": "ten"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
