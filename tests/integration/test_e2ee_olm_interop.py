"""Interop with an independent implementation: a python-olm (libolm) client and a
matrix-nio (vodozemac) client share Megolm sessions over Olm through Sotto."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from olm.group_session import OutboundGroupSession

from tests.integration.e2ee.fixtures import olm_user
from tests.integration.e2ee.nio_helpers import ENCRYPTION_STATE, nio_login
from tests.integration.e2ee.olm_client import MEGOLM_ALGORITHM, OlmClient
from tests.support.server import RunningServer


async def olm_read_room(client: OlmClient, room_id: str, sender: str, rounds: int = 20) -> list[str]:
    """Sync until an encrypted message from `sender` arrives in the room and decrypt it."""
    bodies: list[str] = []
    for _ in range(rounds):
        resp = await client.sync(timeout=500)
        events: list[dict[str, Any]] = (
            resp["rooms"]["join"].get(room_id, {}).get("timeline", {}).get("events", [])
        )
        for event in events:
            if event["type"] == "m.room.encrypted" and event["sender"] == sender:
                decrypted = client.megolm_decrypt({**event, "room_id": room_id})
                assert decrypted["room_id"] == room_id
                bodies.append(decrypted["content"]["body"])
        if bodies:
            return bodies
    raise AssertionError("no encrypted message arrived")


async def test_python_olm_and_nio_exchange_messages(
    server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    alice = await olm_user(server, http, "alice")
    await alice.upload_keys(one_time=10)
    bob = await nio_login(server, str(tmp_path / "stores"), "bob")
    try:
        room = await alice.raw.create_room(
            preset="private_chat", invite=[bob.user_id], initial_state=[ENCRYPTION_STATE]
        )
        await bob.step()
        await bob.join(room)
        await bob.step()
        await alice.sync()

        # libolm -> vodozemac: claim Bob's one-time key, Olm session, share a Megolm session, send.
        session, their_curve, their_ed = await alice.claim_and_start_session(bob.user_id, bob.device_id)
        group = OutboundGroupSession()
        room_key = {
            "algorithm": MEGOLM_ALGORITHM,
            "room_id": room,
            "session_id": group.id,
            "session_key": group.session_key,
        }
        content = alice.olm_encrypt(
            session, bob.user_id, bob.device_id, their_curve, their_ed, "m.room_key", room_key
        )
        await alice.send_to_device("m.room.encrypted", {bob.user_id: {bob.device_id: content}}, "share-1")
        body = f"from-libolm-{secrets.token_hex(6)}"
        encrypted = OlmClient.megolm_encrypt(
            group,
            room,
            alice.curve25519,
            alice.device_id,
            "m.room.message",
            {"msgtype": "m.text", "body": body},
        )
        await alice.raw.ok("PUT", f"/rooms/{quote(room)}/send/m.room.encrypted/m1", json=encrypted)
        await bob.wait_for_text(room, body)

        # vodozemac -> libolm: nio claims Alice's one-time key and shares its own Megolm session.
        reply = f"from-nio-{secrets.token_hex(6)}"
        await bob.send_text(room, reply)
        assert await olm_read_room(alice, room, bob.user_id) == [reply]
        assert any(e.get("decrypted", {}).get("type") == "m.room_key" for e in alice.to_device_log)
        # nio answered over the Olm session Alice started: none of her one-time keys was needed.
        sync = await alice.sync()
        assert sync["device_one_time_keys_count"]["signed_curve25519"] == 10

        # A libolm device with only a fallback key left still gets an Olm session from nio.
        alice2 = await olm_user(server, http, "alice")
        await alice2.upload_keys(one_time=0, fallback=True)
        await alice2.sync()
        await bob.step()
        again = f"fallback-{secrets.token_hex(6)}"
        await bob.send_text(room, again)
        assert again in await olm_read_room(alice2, room, bob.user_id)
        assert (await alice2.sync())["device_unused_fallback_key_types"] == []

        # And a libolm device with one-time keys has exactly one of them claimed by nio.
        alice3 = await olm_user(server, http, "alice")
        await alice3.upload_keys(one_time=3, fallback=False)
        await alice3.sync()
        await bob.step()
        third = f"otk-{secrets.token_hex(6)}"
        await bob.send_text(room, third)
        assert third in await olm_read_room(alice3, room, bob.user_id)
        assert (await alice3.sync())["device_one_time_keys_count"]["signed_curve25519"] == 2
    finally:
        await bob.close()
