"""Encrypted conversations across servers: matrix-nio (vodozemac) clients on each side, with
device keys queried and one-time keys claimed over federation and Olm/Megolm key sharing
carried by m.direct_to_device EDUs."""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest
from nio import AsyncClient, AsyncClientConfig, LoginResponse, MegolmEvent, RoomMessageText

from tests.federation.support import CertAuthority, fed_server, has_membership, wait_for
from tests.federation.synapse import SynapseServer
from tests.integration.e2ee.nio_helpers import NioUser, nio_login


async def _exchange(alice: NioUser, bob: NioUser, room: str) -> None:
    hello = f"secret-hello-{secrets.token_hex(6)}"
    await alice.wait_until_can_encrypt_for(room, [bob.user_id])
    await alice.send_text(room, hello)
    await bob.wait_for_text(room, hello)
    reply = f"secret-reply-{secrets.token_hex(6)}"
    await bob.wait_until_can_encrypt_for(room, [alice.user_id])
    await bob.send_text(room, reply)
    await alice.wait_for_text(room, reply)


async def test_encrypted_chat_between_two_sotto_servers(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    stores = os.path.join(os.path.dirname(tmp_dirs[0]), "stores")
    async with fed_server(tmp_dirs[0], test_ca) as a, fed_server(tmp_dirs[1], test_ca) as b:
        alice = await nio_login(a, stores, "alice")
        bob = await nio_login(b, stores, "bob")
        try:
            room = await alice.create_encrypted_room([bob.user_id])
            await wait_for(lambda: has_membership(b, room, bob.user_id, "invite"), what="invite on B")
            await bob.step()
            await bob.join(room)
            await wait_for(lambda: has_membership(a, room, bob.user_id), what="bob joined on A")
            await alice.step()
            await bob.step()
            await _exchange(alice, bob, room)
        finally:
            await alice.close()
            await bob.close()


# The first Synapse fixture may install Synapse into its own virtualenv (a minute or two).
pytestmark = pytest.mark.timeout(900)


async def synapse_nio(synapse: SynapseServer, store_root: str, localpart: str) -> NioUser:
    login = synapse.register(localpart)
    store_path = os.path.join(store_root, f"syn-{localpart}")
    os.makedirs(store_path, exist_ok=True)
    client = AsyncClient(
        synapse.base_url,
        login["user_id"],
        store_path=store_path,
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    resp = await client.login("password", device_name="nio")
    assert isinstance(resp, LoginResponse), resp
    user = NioUser(client)

    async def on_text(room: Any, event: RoomMessageText) -> None:
        user.texts.append((room.room_id, event.body))

    async def on_undecryptable(room: Any, event: MegolmEvent) -> None:
        user.undecryptable.append(event)

    client.add_event_callback(on_text, RoomMessageText)
    client.add_event_callback(on_undecryptable, MegolmEvent)
    await user.step()
    return user


@pytest.mark.parametrize("creator_side", ["sotto", "synapse"])
async def test_encrypted_chat_with_synapse(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], creator_side: str
) -> None:
    stores = os.path.join(str(tmp_path), "stores")
    async with fed_server(os.path.join(str(tmp_path), "sotto"), test_ca) as sotto:
        sotto_user = await nio_login(sotto, stores, "ivy")
        syn_user = await synapse_nio(synapse, stores, f"jack{creator_side}")
        try:
            if creator_side == "sotto":
                creator, joiner = sotto_user, syn_user
            else:
                creator, joiner = syn_user, sotto_user
            room = await creator.create_encrypted_room([joiner.user_id])

            async def invited() -> bool:
                await joiner.step(timeout=300)
                return room in joiner.client.invited_rooms

            await wait_for(invited, what="invite reaching the other server")
            await joiner.join(room)

            async def both_joined() -> bool:
                await creator.step(timeout=300)
                members = creator.client.rooms[room].users if room in creator.client.rooms else {}
                return joiner.user_id in members

            await wait_for(both_joined, what="join seen by the creator")
            await joiner.step()
            await _exchange(creator, joiner, room)
        finally:
            await sotto_user.close()
            await syn_user.close()
