"""Knocking over federation (make_knock/send_knock v1): a user of B knocks on a room of A,
the knock shows on A and in the knocker's /sync, an invite accepts it and the user joins."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import pytest

from tests.federation.support import CertAuthority, Client, fed_server, has_membership, room_bodies, wait_for


@pytest.mark.parametrize("version", ["10", "11"])
async def test_knock_then_invite_then_join(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str], version: str
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(room_version=version, name="Knock here")
        await alice.state(room_id, "m.room.join_rules", {"join_rule": "knock"})
        await bob.sync()

        path = f"/knock/{quote(room_id, safe='')}"
        assert (await bob.call("POST", path, {"reason": "let me in"}, via=a.server_name))[
            "room_id"
        ] == room_id

        # The knock is in the room on A, with its reason.
        await wait_for(lambda: has_membership(a, room_id, bob.user_id, "knock"), what="knock on A")
        state = await alice.call("GET", f"/rooms/{room_id}/state/m.room.member/{bob.user_id}")
        assert state["membership"] == "knock" and state["reason"] == "let me in"
        # B shows the room under rooms.knock, with the room's name from the returned state.
        knocked = (await bob.sync())["rooms"]["knock"]
        assert room_id in knocked
        events = knocked[room_id]["knock_state"]["events"]
        assert any(e["type"] == "m.room.member" and e["content"]["membership"] == "knock" for e in events)
        assert {"type": "m.room.name", "content": {"name": "Knock here"}}.items() <= next(
            e for e in events if e["type"] == "m.room.name"
        ).items()

        # Accepting is an invite; bob then joins as after any remote invite.
        await alice.call("POST", f"/rooms/{room_id}/invite", {"user_id": bob.user_id})
        await wait_for(lambda: has_membership(b, room_id, bob.user_id, "invite"), what="invite on B")
        await bob.join(room_id, via=[a.server_name])
        await wait_for(lambda: has_membership(a, room_id, bob.user_id, "join"), what="bob joined on A")
        await alice.send(room_id, "welcome")
        await wait_for(lambda: _has(bob, room_id, "welcome"), what="message on B")


async def test_knock_refused_when_the_room_does_not_allow_it(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        invite_only = await alice.create_room(room_version="10")
        path = f"/knock/{quote(invite_only, safe='')}"
        out = await bob.call("POST", path, {}, expect=403, via=a.server_name)
        assert out["errcode"] == "M_FORBIDDEN"
        assert await b.hs.events.get_membership(invite_only, bob.user_id) is None


async def _has(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)
