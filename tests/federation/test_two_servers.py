"""Two Sotto servers federating: joins, messages both ways, invites, leaves, EDUs, backfill."""

from __future__ import annotations

import aiohttp
import pytest

from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    room_bodies,
    wait_for,
)


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_remote_join_and_messages_both_ways(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str], version: str
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="public_chat", room_version=version, name="Fed room")
        await alice.send(room_id, "before bob")
        assert (await bob.join(room_id, via=[a.server_name]))["room_id"] == room_id
        # Bob's server knows the room's state and history.
        members = await b.hs.events.get_room_members(room_id)
        assert set(members) == {alice.user_id, bob.user_id}
        await wait_for(lambda: _joined_on(a, room_id, bob.user_id), what="bob's join on A")

        await bob.send(room_id, "hello from B")
        await wait_for(lambda: _has_body(alice, room_id, "hello from B"), what="B's message on A")
        await alice.send(room_id, "hello from A")
        await wait_for(lambda: _has_body(bob, room_id, "hello from A"), what="A's message on B")

        # Same state on both servers.
        state_a = await a.hs.events.get_current_state_ids(room_id)
        state_b = await b.hs.events.get_current_state_ids(room_id)
        assert state_a == state_b


async def _joined_on(srv: object, room_id: str, user_id: str) -> bool:
    membership = await srv.hs.events.get_membership(room_id, user_id)  # type: ignore[attr-defined]
    return membership is not None and membership[0] == "join"


async def _has_body(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)
