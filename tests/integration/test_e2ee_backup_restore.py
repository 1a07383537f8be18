"""Key backup end to end: a nio device backs up its Megolm sessions (encrypted with the
backup's Curve25519 key by libolm's PkEncryption, i.e. m.megolm_backup.v1.curve25519-aes-sha2),
and a brand-new nio device restores them from the server and decrypts the room history."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from nio import MegolmEvent, MessageDirection, RoomMessagesResponse, RoomMessageText
from nio.crypto import Olm
from olm.pk import PkDecryption, PkEncryption, PkMessage

from tests.integration.e2ee.nio_helpers import NioUser, nio_login
from tests.support.http import RawClient
from tests.support.server import RunningServer

BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
MEGOLM_ALGORITHM = "m.megolm.v1.aes-sha2"


def raw_for(user: NioUser, server: RunningServer, http: aiohttp.ClientSession) -> RawClient:
    return RawClient(http, server.base_url, user.client.access_token, user.user_id)


def backup_payload(user: NioUser, public_key: str) -> dict[str, Any]:
    """Every inbound Megolm session of the device, encrypted to the backup key."""
    rooms: dict[str, Any] = {}
    encryption = PkEncryption(public_key)
    for session in user.client.olm.inbound_group_store:
        plaintext = {
            "algorithm": MEGOLM_ALGORITHM,
            "forwarding_curve25519_key_chain": session.forwarding_chain,
            "sender_claimed_keys": {"ed25519": session.ed25519},
            "sender_key": session.sender_key,
            "session_key": session.export_session(session.first_known_index),
        }
        message = encryption.encrypt(json.dumps(plaintext))
        rooms.setdefault(session.room_id, {"sessions": {}})["sessions"][session.id] = {
            "first_message_index": session.first_known_index,
            "forwarded_count": len(session.forwarding_chain),
            "is_verified": False,
            "session_data": {
                "ephemeral": message.ephemeral_key,
                "ciphertext": message.ciphertext,
                "mac": message.mac,
            },
        }
    return {"rooms": rooms}


def restore(user: NioUser, decryption: PkDecryption, backup: dict[str, Any]) -> int:
    """Decrypt the backed-up sessions and import them into the device's store."""
    imported = 0
    for room_id, room in backup["rooms"].items():
        for data in room["sessions"].values():
            sd = data["session_data"]
            plain = json.loads(decryption.decrypt(PkMessage(sd["ephemeral"], sd["mac"], sd["ciphertext"])))
            assert plain["algorithm"] == MEGOLM_ALGORITHM
            session = Olm._import_group_session(
                plain["session_key"],
                plain["sender_claimed_keys"]["ed25519"],
                plain["sender_key"],
                room_id,
                plain["forwarding_curve25519_key_chain"],
            )
            assert session is not None
            if user.client.olm.inbound_group_store.add(session):
                user.client.olm.save_inbound_group_session(session)
                imported += 1
    return imported


async def test_backup_and_restore_on_new_device(
    server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stores = str(tmp_path / "stores")
    alice = await nio_login(server, stores, "alice")
    bob = await nio_login(server, stores, "bob")
    try:
        room = await alice.create_encrypted_room([bob.user_id])
        await bob.step()
        await bob.join(room)
        await alice.step()
        await bob.step()
        history = [f"history-{i}-{secrets.token_hex(6)}" for i in range(3)]
        for body in history:
            await bob.send_text(room, body)
        for body in history:
            await alice.wait_for_text(room, body)

        # Alice's first device creates a backup and uploads her sessions.
        raw = raw_for(alice, server, http)
        decryption = PkDecryption()  # type: ignore[no-untyped-call]
        recovery_pickle = decryption.pickle("recovery passphrase")
        version = (
            await raw.ok(
                "POST",
                "/room_keys/version",
                json={"algorithm": BACKUP_ALGORITHM, "auth_data": {"public_key": decryption.public_key}},
            )
        )["version"]
        payload = backup_payload(alice, decryption.public_key)
        assert payload["rooms"][room]["sessions"]
        stored = await raw.ok("PUT", "/room_keys/keys", params={"version": version}, json=payload)
        assert stored["count"] == sum(len(r["sessions"]) for r in payload["rooms"].values())

        # A new device: it cannot read history until it restores the backup.
        alice2 = await nio_login(server, stores, "alice", device_name="alice2")
        try:
            raw2 = raw_for(alice2, server, http)
            info = await raw2.ok("GET", "/room_keys/version")
            assert info["version"] == version and info["count"] == stored["count"]
            assert info["etag"] == stored["etag"]
            backup = await raw2.ok("GET", "/room_keys/keys", params={"version": info["version"]})
            recovered = PkDecryption.from_pickle(recovery_pickle, "recovery passphrase")
            assert recovered.public_key == info["auth_data"]["public_key"]
            assert restore(alice2, recovered, backup) >= 1

            # One room's keys can also be fetched on their own.
            per_room = await raw2.ok("GET", f"/room_keys/keys/{quote(room)}", params={"version": version})
            assert set(per_room["sessions"]) == set(backup["rooms"][room]["sessions"])

            resp = await alice2.client.room_messages(
                room, start=alice2.client.next_batch or "", direction=MessageDirection.back, limit=50
            )
            assert isinstance(resp, RoomMessagesResponse), resp
            bodies = []
            for event in resp.chunk:
                if isinstance(event, MegolmEvent):
                    event = alice2.client.decrypt_event(event)
                if isinstance(event, RoomMessageText):
                    bodies.append(event.body)
            assert sorted(bodies) == sorted(history)
        finally:
            await alice2.close()
    finally:
        await alice.close()
        await bob.close()
