"""Sotto against a real Synapse (pinned, installed on first use), in room versions 11 and 12."""

from __future__ import annotations

import os
from collections.abc import Iterator

import aiohttp
import pytest

from tests.federation.support import CertAuthority, Client, fed_server, room_bodies, wait_for
from tests.federation.synapse import SynapseServer


@pytest.fixture(scope="module")
def synapse(test_ca: CertAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    server = SynapseServer(str(tmp_path_factory.mktemp("synapse")), test_ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def synapse_client(synapse: SynapseServer, localpart: str, http: aiohttp.ClientSession) -> Client:
    login = synapse.register(localpart)
    return Client(synapse.base_url, login["user_id"], login["access_token"], http)


@pytest.mark.parametrize("version", ["11", "12"])
async def test_sotto_user_joins_synapse_room(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], version: str
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, f"carol{version}", http)
        dave = await Client.login(sotto, "dave", http)
        room_id = await syn.create_room(preset="public_chat", room_version=version)
        await syn.send(room_id, "synapse says hi")
        await dave.join(room_id, via=[synapse.server_name])
        await wait_for(lambda: _member_joined(syn, room_id, dave.user_id), what="dave joined on Synapse")
        await dave.send(room_id, "sotto says hi")
        await wait_for(lambda: _has(syn, room_id, "sotto says hi"), what="Sotto message on Synapse")
        await syn.send(room_id, "synapse replies")
        await wait_for(lambda: _has(dave, room_id, "synapse replies"), what="Synapse message on Sotto")


@pytest.mark.parametrize("version", ["11", "12"])
async def test_synapse_user_joins_sotto_room(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], version: str
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, f"erin{version}", http)
        frank = await Client.login(sotto, "frank", http)
        room_id = await frank.create_room(preset="public_chat", room_version=version)
        await frank.send(room_id, "sotto room opens")
        await syn.join(room_id, via=[sotto.server_name])
        await wait_for(lambda: _joined_locally(sotto, room_id, syn.user_id), what="Synapse user joined on Sotto")
        await syn.send(room_id, "synapse in sotto room")
        await wait_for(lambda: _has(frank, room_id, "synapse in sotto room"), what="Synapse message on Sotto")
        await frank.send(room_id, "welcome")
        await wait_for(lambda: _has(syn, room_id, "welcome"), what="Sotto message on Synapse")


async def _has(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)


async def _member_joined(client: Client, room_id: str, user_id: str) -> bool:
    data = await client.call("GET", f"/rooms/{room_id}/joined_members")
    return user_id in data.get("joined", {})


async def _joined_locally(srv: object, room_id: str, user_id: str) -> bool:
    membership = await srv.hs.events.get_membership(room_id, user_id)  # type: ignore[attr-defined]
    return membership is not None and membership[0] == "join"
