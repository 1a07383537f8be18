"""Room upgrades: tombstone, predecessor, copied state, moved alias, members follow."""

from __future__ import annotations

import aiohttp
from nio import (
    JoinResponse,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomResolveAliasResponse,
    SyncResponse,
)

from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer


async def test_room_upgrade_moves_members_to_the_new_room(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob:
        created = await alice.room_create(name="Old name", topic="the topic", alias="upgradable",
                                          invite=[bob.user_id], room_version="11")
        assert isinstance(created, RoomCreateResponse)
        old = created.room_id
        await bob.join(old)
        await alice.sync()
        first = await bob.sync()
        assert isinstance(first, SyncResponse)
        since = first.next_batch
        # nio has no room upgrade call: upgrade over raw HTTP with alice's token.
        async with aiohttp.ClientSession() as s, s.post(
            f"{server.base_url}/_matrix/client/v3/rooms/{old}/upgrade",
            json={"new_version": "12"}, headers={"Authorization": f"Bearer {alice.access_token}"},
        ) as r:
            assert r.status == 200, await r.text()
            new_room = (await r.json())["replacement_room"]

        # Bob's client sees the tombstone and follows it.
        synced = await bob.sync(since=since, timeout=1000)
        assert isinstance(synced, SyncResponse)
        old_events = synced.rooms.join[old].timeline.events
        tombstones = [e for e in old_events if e.source.get("type") == "m.room.tombstone"]
        assert tombstones and tombstones[0].source["content"]["replacement_room"] == new_room
        assert new_room in synced.rooms.invite  # private room: members are invited to follow
        joined = await bob.join(new_room)
        assert isinstance(joined, JoinResponse)

        state = await bob.room_get_state(new_room)
        assert isinstance(state, RoomGetStateResponse)
        by_type = {e["type"]: e for e in state.events if e.get("state_key") == ""}
        assert by_type["m.room.create"]["content"]["predecessor"]["room_id"] == old
        assert by_type["m.room.create"]["content"]["room_version"] == "12"
        assert by_type["m.room.name"]["content"]["name"] == "Old name"
        assert by_type["m.room.topic"]["content"]["topic"] == "the topic"
        alias = f"#upgradable:{server.server_name}"
        assert by_type["m.room.canonical_alias"]["content"]["alias"] == alias
        resolved = await bob.room_resolve_alias(alias)
        assert isinstance(resolved, RoomResolveAliasResponse) and resolved.room_id == new_room

        # The old room is locked down: bob may no longer talk there.
        sent = await bob.room_send(old, "m.room.message", {"msgtype": "m.text", "body": "still here?"})
        assert getattr(sent, "status_code", None) == "M_FORBIDDEN"

        # Upgrading needs power; upgrading twice is refused.
        async with aiohttp.ClientSession() as s:
            for token, expected in ((bob.access_token, 403), (alice.access_token, 400)):
                async with s.post(f"{server.base_url}/_matrix/client/v3/rooms/{old}/upgrade",
                                  json={"new_version": "12"},
                                  headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == expected
