"""The public room directory across servers: a client lists another server's published
rooms (`publicRooms?server=`), which that server answers over
`/_matrix/federation/v1/publicRooms` when room_directory.allow_public_rooms_over_federation
is on (403 M_FORBIDDEN by default); between two Sotto servers, and with Synapse both ways."""

from __future__ import annotations

import os
from typing import Any

import aiohttp

from bridge.client import RemoteError
from bridge.directory import PATH
from tests.federation.support import CertAuthority, Client, fed_server, federation_of, server_pair
from tests.federation.synapse import SynapseServer
from tests.federation.test_synapse import synapse_client
from tests.support.server import free_port

# room_directory: other servers may read the directory.
SHARED = {"allow_public_rooms_over_federation": True}


def names(directory: dict[str, Any]) -> set[str]:
    return {r.get("name", "") for r in directory["chunk"]}


async def test_a_client_lists_another_servers_public_rooms(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca, room_directory=SHARED) as b,
        aiohttp.ClientSession() as http,
    ):
        alice, bob = await Client.login(a, "alice", http), await Client.login(b, "bob", http)
        await bob.create_room(preset="public_chat", name="B lobby", visibility="public", topic="welcome")
        await bob.create_room(preset="public_chat", name="B games", visibility="public")
        await bob.create_room(preset="public_chat", name="B unlisted")  # public, not published
        await alice.create_room(preset="public_chat", name="A local", visibility="public")

        listed = await alice.call("GET", "/publicRooms", server=b.server_name)
        assert names(listed) == {"B lobby", "B games"}
        lobby = next(r for r in listed["chunk"] if r["name"] == "B lobby")
        assert lobby["topic"] == "welcome" and lobby["num_joined_members"] == 1
        # Paged, and searched (a POST to the other server).
        first = await alice.call("GET", "/publicRooms", server=b.server_name, limit="1")
        assert len(first["chunk"]) == 1 and first["next_batch"]
        rest = await alice.call(
            "GET", "/publicRooms", server=b.server_name, limit="1", since=first["next_batch"]
        )
        assert names(first) | names(rest) == {"B lobby", "B games"}
        found = await alice.call(
            "POST", "/publicRooms", {"filter": {"generic_search_term": "LOBBY"}}, server=b.server_name
        )
        assert names(found) == {"B lobby"}
        # A's own directory, and its own name as `server`, stay local.
        assert names(await alice.call("GET", "/publicRooms")) == {"A local"}
        assert names(await alice.call("GET", "/publicRooms", server=a.server_name)) == {"A local"}
        # Asking another server is for signed-in users; a server that is not there is a 502.
        async with http.get(f"{a.base_url}/_matrix/client/v3/publicRooms?server={b.server_name}") as resp:
            assert resp.status == 401
        gone = f"127.0.0.1:{free_port()}"
        error = await alice.call("GET", "/publicRooms", expect=502, server=gone)
        assert error["errcode"] == "M_UNKNOWN"


async def test_public_rooms_both_ways_with_synapse(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    async with (
        fed_server(str(tmp_path), test_ca, room_directory=SHARED) as sotto,
        aiohttp.ClientSession() as http,
    ):
        syn = synapse_client(synapse, "lena", http)
        mia = await Client.login(sotto, "mia", http)
        await syn.create_room(preset="public_chat", name="Synapse square", visibility="public")
        await mia.create_room(preset="public_chat", name="Sotto square", visibility="public")

        from_synapse = await mia.call("GET", "/publicRooms", server=synapse.server_name)
        assert "Synapse square" in names(from_synapse)
        searched = await mia.call(
            "POST", "/publicRooms", {"filter": {"generic_search_term": "square"}}, server=synapse.server_name
        )
        assert "Synapse square" in names(searched)
        from_sotto = await syn.call("GET", "/publicRooms", server=sotto.server_name)
        assert names(from_sotto) == {"Sotto square"}
        searched = await syn.call(
            "POST", "/publicRooms", {"filter": {"generic_search_term": "Sotto"}}, server=sotto.server_name
        )
        assert names(searched) == {"Sotto square"}


async def test_the_directory_is_not_shared_over_federation_by_default(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with server_pair(test_ca, tmp_dirs) as (a, b, alice, bob):
        await bob.create_room(preset="public_chat", name="B lobby", visibility="public")
        # B answers A's request 403 M_FORBIDDEN, over both methods (as Synapse)...
        client = federation_of(a).client
        for method in ("GET", "POST"):
            try:
                if method == "GET":
                    await client.get(b.server_name, PATH)
                else:
                    await client.post(b.server_name, PATH, {"limit": 5})
            except RemoteError as e:
                assert e.status == 403 and e.errcode == "M_FORBIDDEN", (method, e)
            else:
                raise AssertionError(f"{method} {PATH} was answered")
        # ...so alice's client sees a 502 from A, while B's own users still read it.
        error = await alice.call("GET", "/publicRooms", expect=502, server=b.server_name)
        assert error["errcode"] == "M_UNKNOWN"
        assert names(await bob.call("GET", "/publicRooms")) == {"B lobby"}
