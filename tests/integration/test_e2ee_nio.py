"""End-to-end encryption between real matrix-nio clients (vodozemac) through Sotto.

Covers: two users exchanging encrypted messages both ways; a second device of a user
and a third user joining later reading new messages; SAS verification over to-device;
and that neither the database files nor the server logs contain any plaintext sent.
"""

from __future__ import annotations

import glob
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.e2ee.nio_helpers import NioUser, nio_login
from tests.support.postgres import table_text
from tests.support.server import RunningServer


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[Path]:
    """Everything the server logs (DEBUG and up) during the test, in a file."""
    path = tmp_path / "server.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def assert_not_stored(tmp_path: Path, log_path: Path, rows: bytes | None, plaintexts: list[str]) -> None:
    """No plaintext in the server log, nor in the database: its files, or (PostgreSQL) its rows."""
    assert log_path.stat().st_size > 0, "the server log capture is empty"
    stored: dict[str, bytes] = {log_path.name: log_path.read_bytes()}
    if rows is not None:
        assert b"@alice:" in rows, "the row dump holds nothing"
        stored["postgresql rows"] = rows
    else:
        files = [Path(p) for p in glob.glob(str(tmp_path / "homeserver.db*"))]
        assert any(f.name == "homeserver.db" for f in files)
        stored.update((f.name, f.read_bytes()) for f in files)
    for name, data in stored.items():
        for text in plaintexts:
            assert text.encode() not in data, f"plaintext found in {name}"


async def test_encrypted_chat_both_ways_new_devices_and_no_plaintext_at_rest(
    server: RunningServer, tmp_path: Path, server_log: Path
) -> None:
    stores = str(tmp_path / "stores")
    sent: list[str] = []

    def text(label: str) -> str:
        value = f"{label}-{secrets.token_hex(8)}"
        sent.append(value)
        return value

    alice = await nio_login(server, stores, "alice")
    bob = await nio_login(server, stores, "bob")
    try:
        room = await alice.create_encrypted_room([bob.user_id])
        await bob.step()
        await bob.join(room)
        await alice.step()
        await bob.step()

        hello = text("hello-bob")
        await alice.send_text(room, hello)
        await bob.wait_for_text(room, hello)

        reply = text("hi-alice")
        await bob.send_text(room, reply)
        await alice.wait_for_text(room, reply)

        # Bob adds a second device: Alice learns of it through device_lists and encrypts to both.
        bob2 = await nio_login(server, stores, "bob", device_name="bob2")
        await alice.step()
        both = text("to-both-bob-devices")
        await alice.send_text(room, both)
        await bob.wait_for_text(room, both)
        await bob2.wait_for_text(room, both)

        # Carol joins later and reads what is sent after she joined.
        carol = await nio_login(server, stores, "carol")
        invite = await alice.client.room_invite(room, carol.user_id)
        assert type(invite).__name__ == "RoomInviteResponse", invite
        await carol.step()
        await carol.join(room)
        await alice.step()
        later = text("welcome-carol")
        await alice.send_text(room, later)
        for reader in (bob, bob2, carol):
            await reader.wait_for_text(room, later)
        # And Bob's second device can answer everyone.
        from_bob2 = text("from-bob2")
        await bob2.send_text(room, from_bob2)
        for reader in (alice, bob, carol):
            await reader.wait_for_text(room, from_bob2)
        assert (room, hello) not in carol.texts
        await bob2.close()
        await carol.close()
    finally:
        await alice.close()
        await bob.close()
    url = server.config.database.url
    rows = await table_text(url) if url.startswith("postgresql") else None
    assert_not_stored(tmp_path, server_log, rows, sent)


async def verify(a: NioUser, b: NioUser) -> None:
    """Run a SAS verification started by `a` with `b`'s device, over to-device messages."""
    device = a.device(b.user_id, b.device_id)
    start = await a.client.start_key_verification(device)
    assert type(start).__name__ == "ToDeviceResponse", start
    for _ in range(10):
        await b.step(timeout=200)
        if b.client.key_verifications:
            break
    (txn,) = b.client.key_verifications
    accept = await b.client.accept_key_verification(txn)
    assert type(accept).__name__ == "ToDeviceResponse", accept
    for _ in range(10):
        await a.step(timeout=200)
        await b.step(timeout=200)
        sas_a, sas_b = a.client.key_verifications.get(txn), b.client.key_verifications[txn]
        if (
            sas_a is not None
            and getattr(sas_a, "their_sas_key", None)
            and getattr(sas_b, "their_sas_key", None)
        ):
            break
    sas_a, sas_b = a.client.key_verifications[txn], b.client.key_verifications[txn]
    assert sas_a.get_emoji() == sas_b.get_emoji()
    assert sas_a.get_decimals() == sas_b.get_decimals()
    await a.client.confirm_short_auth_string(txn)
    await b.client.confirm_short_auth_string(txn)
    for _ in range(10):
        await a.step(timeout=200)
        await b.step(timeout=200)
        if sas_a.verified and sas_b.verified:
            break
    assert sas_a.verified and sas_b.verified
    assert a.device(b.user_id, b.device_id).verified
    assert b.device(a.user_id, a.device_id).verified


async def test_sas_verification_between_nio_devices(server: RunningServer, tmp_path: Path) -> None:
    stores = str(tmp_path / "stores")
    alice = await nio_login(server, stores, "alice")
    bob = await nio_login(server, stores, "bob")
    try:
        room = await alice.create_encrypted_room([bob.user_id])
        await bob.step()
        await bob.join(room)
        await alice.step()
        await bob.step()
        await verify(alice, bob)
        # Verified devices can now talk without ignoring unverified ones.
        resp = await alice.client.room_send(
            room, "m.room.message", {"msgtype": "m.text", "body": "verified hi"}
        )
        assert type(resp).__name__ == "RoomSendResponse", resp
        await bob.wait_for_text(room, "verified hi")
    finally:
        await alice.close()
        await bob.close()
