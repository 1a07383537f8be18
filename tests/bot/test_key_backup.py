"""Key backup: sessions uploaded encrypted, readable with python-olm, restorable after losing the store."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import MegolmEvent, RoomMessagesResponse
from olm.group_session import InboundGroupSession as OlmInboundGroupSession
from olm.pk import PkDecryption, PkMessage

from clients import Bot, Context
from clients.recovery import RecoveryKeyError, decode_recovery_key, encode_recovery_key
from tests.bot.conftest import BotFactory, running
from tests.bot.peer import Peer
from tests.bot.test_bot_e2ee import joined
from tests.support.server import RunningServer

Peers = Callable[[str], Awaitable[Peer]]


def test_recovery_key_round_trip_and_typo_detection() -> None:
    key = os.urandom(32)
    text = encode_recovery_key(key)
    assert decode_recovery_key(text) == key
    assert decode_recovery_key(text.replace(" ", "")) == key  # spaces are only for reading
    assert all(len(group) == 4 for group in text.split()[:-1])
    # The parity byte is one XOR over all bytes, so a typo slips through about 1 time in 256:
    # the typo check uses a fixed key whose mistyped form is known to be caught.
    fixed = encode_recovery_key(bytes(range(32)))
    typo = ("2" if fixed[5] != "2" else "3").join([fixed[:5], fixed[6:]])
    with pytest.raises(RecoveryKeyError):
        decode_recovery_key(typo)
    with pytest.raises(RecoveryKeyError):
        decode_recovery_key("not base58 0OIl")


def olm_pk_decryption(private_key: bytes) -> tuple[PkDecryption, str]:
    """python-olm's PkDecryption for a given private key (its Python API only makes random ones)."""
    from _libolm import ffi, lib

    pk = PkDecryption()  # type: ignore[no-untyped-call]
    length = lib.olm_pk_key_length()
    public = ffi.new("char[]", length)
    assert (
        lib.olm_pk_key_from_private(
            pk._pk_decryption, public, length, ffi.from_buffer(private_key), len(private_key)
        )
        != lib.olm_error()
    )
    return pk, str(ffi.unpack(public, length).decode())


async def backed_up_keys(server: RunningServer, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(f"{server.base_url}/_matrix/client/v3/room_keys/version") as resp:
            version = await resp.json()
        async with s.get(
            f"{server.base_url}/_matrix/client/v3/room_keys/keys", params={"version": version["version"]}
        ) as resp:
            assert resp.status == 200
            keys: dict[str, Any] = await resp.json()
    return {"version": version, "keys": keys}


async def test_sessions_are_backed_up_and_restored(
    server: RunningServer, make_bot: BotFactory, peers: Peers, tmp_path: Path
) -> None:
    bot = make_bot(key_backup=True)

    @bot.command("echo")
    async def echo(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    async with running(bot, server):
        assert bot.backup is not None and bot.client is not None
        recovery_key = bot.backup.recovery_key
        assert recovery_key is not None
        token = bot.client.access_token
        alice = await peers("alice")
        room = await alice.create_room([bot.user_id])
        await alice.wait_for(joined(bot.user_id))
        secret_id = await alice.send_text(room, "!echo the backed-up secret")
        await alice.wait_for_reply(room, bot.user_id)
        await alice.send_text(room, "!echo once more")  # one more sync: the upload happened by now
        await alice.wait_for_reply(room, bot.user_id)

    backup = await backed_up_keys(server, token)
    assert backup["version"]["algorithm"] == "m.megolm_backup.v1.curve25519-aes-sha2"
    sessions = backup["keys"]["rooms"][room]["sessions"]
    assert len(sessions) >= 2  # Alice's session and the bot's own

    # Decrypt the backup with python-olm (an independent implementation) and read Alice's message.
    pk, public = olm_pk_decryption(decode_recovery_key(recovery_key))
    assert public == backup["version"]["auth_data"]["public_key"]
    secret_event = await fetch_event(server, token, room, secret_id)
    session_data = sessions[secret_event["content"]["session_id"]]["session_data"]
    plain = json.loads(
        pk.decrypt(PkMessage(session_data["ephemeral"], session_data["mac"], session_data["ciphertext"]))
    )
    olm_session = OlmInboundGroupSession.import_session(plain["session_key"])
    decrypted, _ = olm_session.decrypt(secret_event["content"]["ciphertext"])
    assert json.loads(decrypted)["content"]["body"] == "!echo the backed-up secret"
    # The homeserver holds no plaintext session keys.
    assert plain["session_key"] not in json.dumps(backup)

    # The store is lost: a new login cannot read history, until the backup is restored.
    fresh = Bot(
        str(tmp_path / "new-store"),
        homeserver=server.base_url,
        user_id=bot.user_id,
        password="password",
        key_backup=True,
        sync_timeout_ms=500,
    )
    try:
        await fresh.connect()
        await fresh.sync_once()
        assert await history_body(fresh, room, secret_id) is None
        restored = await fresh.restore_key_backup(recovery_key)
        assert restored >= 2
        assert await history_body(fresh, room, secret_id) == "!echo the backed-up secret"
    finally:
        await fresh.close()


async def fetch_event(server: RunningServer, token: str, room: str, event_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s,
        s.get(f"{server.base_url}/_matrix/client/v3/rooms/{room}/event/{event_id}") as resp,
    ):
        assert resp.status == 200
        event: dict[str, Any] = await resp.json()
        return event


async def history_body(bot: Bot, room: str, event_id: str) -> str | None:
    client = bot.client
    assert client is not None
    resp = await client.room_messages(room, start="", limit=50)
    assert isinstance(resp, RoomMessagesResponse), resp
    for event in resp.chunk:
        if event.event_id != event_id:
            continue
        if isinstance(event, MegolmEvent):
            try:
                event = client.decrypt_event(event)
            except Exception:
                return None
        body = getattr(event, "body", None)
        return body if isinstance(body, str) else None
    raise AssertionError(f"{event_id} not in history")
