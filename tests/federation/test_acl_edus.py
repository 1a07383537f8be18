"""Server ACLs apply to EDUs too: typing and receipts from a denied server are dropped, per room."""

from __future__ import annotations

from functools import partial

import aiohttp

from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    has_membership,
    wait_for,
)


async def test_typing_and_receipts_from_acl_denied_server_are_dropped(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        denied = await alice.create_room(preset="public_chat")
        open_room = await alice.create_room(preset="public_chat")
        for room_id in (denied, open_room):
            await bob.join(room_id, via=[a.server_name])
            await wait_for(partial(has_membership, a, room_id, bob.user_id), what="bob joined on A")
        msg_denied = await alice.send(denied, "read me")
        msg_open = await alice.send(open_room, "read me too")
        # Both servers are IP literals: this ACL shuts B (and, seen from B, A) out of one room.
        await alice.state(denied, "m.room.server_acl", {"allow": ["*"], "allow_ip_literals": False})

        # One transaction from B carrying typing and receipts for both rooms.
        fb = federation_of(b)
        receipt = {"ts": 1234}
        body = {
            "origin": b.server_name,
            "origin_server_ts": 0,
            "pdus": [],
            "edus": [
                {
                    "edu_type": "m.typing",
                    "content": {"room_id": denied, "user_id": bob.user_id, "typing": True},
                },
                {
                    "edu_type": "m.typing",
                    "content": {"room_id": open_room, "user_id": bob.user_id, "typing": True},
                },
                {
                    "edu_type": "m.receipt",
                    "content": {
                        denied: {"m.read": {bob.user_id: {"event_ids": [msg_denied], "data": receipt}}},
                        open_room: {"m.read": {bob.user_id: {"event_ids": [msg_open], "data": receipt}}},
                    },
                },
            ],
        }
        await fb.client.put(a.server_name, "/_matrix/federation/v1/send/acl-edus-1", body)

        assert bob.user_id in a.hs.typing.typing_users(open_room)
        assert bob.user_id not in a.hs.typing.typing_users(denied)
        receipts = await a.hs.receipts.store.get_since([denied, open_room], None, 2**62)
        by_room = {r.room_id: r.event_id for r in receipts if r.user_id == bob.user_id}
        assert by_room == {open_room: msg_open}
