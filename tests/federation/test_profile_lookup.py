"""Profiles across servers: profiles.allow_profile_lookup_over_federation (on by default, as
Synapse's) decides whether other servers' profile queries are answered, and
profiles.include_profile_data_on_invite puts a remote invitee's profile, asked of their
server, into the invite (the invite goes out without it if that server will not say)."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from bridge.client import RemoteError
from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    has_membership,
    wait_for,
)

QUERY = "/_matrix/federation/v1/query/profile"


async def test_a_server_may_refuse_profile_lookups(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    closed = {"allow_profile_lookup_over_federation": False}
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca, profiles=closed) as b,
        aiohttp.ClientSession() as http,
    ):
        alice, bob = await Client.login(a, "alice", http), await Client.login(b, "bob", http)
        await alice.call("PUT", f"/profile/{alice.user_id}/displayname", {"displayname": "Alice A."})
        await bob.call("PUT", f"/profile/{bob.user_id}/displayname", {"displayname": "Bob B."})

        # B answers A's query 403 M_FORBIDDEN, whatever the field...
        for query in ({"user_id": bob.user_id}, {"user_id": bob.user_id, "field": "displayname"}):
            try:
                await federation_of(a).client.get(b.server_name, QUERY, query=query)
            except RemoteError as e:
                assert e.status == 403 and e.errcode == "M_FORBIDDEN", (query, e)
            else:
                raise AssertionError(f"{query} was answered")
        # ...so alice's client gets a 502 from A, while B's own users still read the profile,
        # and A (default) still answers B.
        assert (await alice.call("GET", f"/profile/{bob.user_id}", expect=502))["errcode"] == "M_UNKNOWN"
        assert (await bob.call("GET", f"/profile/{bob.user_id}"))["displayname"] == "Bob B."
        assert (await bob.call("GET", f"/profile/{alice.user_id}"))["displayname"] == "Alice A."

        # Invites: B tells A nothing, so alice's invite of bob goes out without his profile;
        # A answers B, so bob's invite of alice carries hers.
        room_a = await alice.create_room(preset="private_chat")
        await alice.call("POST", f"/rooms/{room_a}/invite", {"user_id": bob.user_id})
        room_b = await bob.create_room(preset="private_chat")
        await bob.call("POST", f"/rooms/{room_b}/invite", {"user_id": alice.user_id})
        await wait_for(lambda: has_membership(b, room_a, bob.user_id, "invite"), what="bob's invite on B")
        await wait_for(lambda: has_membership(a, room_b, alice.user_id, "invite"), what="alice's invite on A")
        path = f"/rooms/{room_a}/state/m.room.member/{quote(bob.user_id)}"
        assert await alice.call("GET", path) == {"membership": "invite"}
        path = f"/rooms/{room_b}/state/m.room.member/{quote(alice.user_id)}"
        assert await bob.call("GET", path) == {"membership": "invite", "displayname": "Alice A."}
