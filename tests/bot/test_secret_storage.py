"""Secret storage (SSSS): vectors from mautrix's test suite, and a bot that loses its store and
comes back with the same identity and its message history, from the recovery key alone."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients import Bot, BotError, Context
from clients.crosssigning import query_identity
from clients.recovery import decode_recovery_key
from clients.secrets import (
    SecretStorageError,
    decrypt_secret,
    encrypt_secret,
    key_description,
    key_matches,
)
from tests.bot.conftest import BotFactory, running
from tests.bot.peer import Peer
from tests.bot.test_bot_e2ee import joined
from tests.bot.test_key_backup import history_body
from tests.support.server import RunningServer

Peers = Callable[[str], Awaitable[Peer]]

# From mautrix-python's crypto/ssss/key_test.py (keys made by Element).
KEY1_RECOVERY_KEY = "EsTE s92N EtaX s2h6 VQYF 9Kao tHYL mkyL GKMh isZb KJ4E tvoC"
KEY1_META = {
    "algorithm": "m.secret_storage.v1.aes-hmac-sha2",
    "iv": "xxkTK0L4UzxgAFkQ6XPwsw",
    "mac": "MEhooO0ZhFJNxUhvRMSxBnJfL20wkLgle3ocY0ee/eA",
}
KEY1_MASTER_SECRET = {
    "iv": "BpKP9nQJTE9jrsAssoxPqQ==",
    "ciphertext": "fNRiiiidezjerTgV+G6pUtmeF3izzj5re/mVvY0hO2kM6kYGrxLuIu2ej80=",
    "mac": "/gWGDGMyOLmbJp+aoSLh5JxCs0AdS6nAhjzpe+9G2Q0=",
}
KEY1_MASTER_DECRYPTED = "68f97fd1922eecf6b82bb890d24d0652984e7a1d703b9e867b7ebaf7feb95b6f"
KEY2_RECOVERY_KEY = "EsUC xSxt XJgQ dz19 8WBZ rHdE GZo7 ybsn EFmG Y5HY MDAG GNWe"
KEY2_META = {
    "algorithm": "m.secret_storage.v1.aes-hmac-sha2",
    "iv": "O0BOvTqiIAYjC+RMcyHfWw==",
    "mac": "7k6OruQlWg0UmQjxGZ0ad4Q6DdwkgnoI7G6X3IjBYtI=",
}


def test_vectors_from_mautrix() -> None:
    key1 = decode_recovery_key(KEY1_RECOVERY_KEY)
    key2 = decode_recovery_key(KEY2_RECOVERY_KEY)
    assert key_matches(key1, KEY1_META) and key_matches(key2, KEY2_META)
    assert not key_matches(key1, KEY2_META) and not key_matches(key2, KEY1_META)
    secret = decrypt_secret(key1, "m.cross_signing.master", KEY1_MASTER_SECRET)
    assert base64.b64decode(secret).hex() == KEY1_MASTER_DECRYPTED
    with pytest.raises(SecretStorageError, match="MAC"):
        decrypt_secret(key2, "m.cross_signing.master", KEY1_MASTER_SECRET)
    with pytest.raises(SecretStorageError, match="MAC"):  # bound to the secret's name
        decrypt_secret(key1, "m.cross_signing.self_signing", KEY1_MASTER_SECRET)


def test_round_trip_and_iv_bit_63() -> None:
    key = os.urandom(32)
    for _ in range(20):
        data = encrypt_secret(key, "m.megolm_backup.v1", "c2VjcmV0")
        iv = base64.b64decode(data["iv"] + "==")
        assert iv[8] & 0x80 == 0
        assert decrypt_secret(key, "m.megolm_backup.v1", data) == "c2VjcmV0"
    assert key_matches(key, key_description(key)) and not key_matches(os.urandom(32), key_description(key))


async def account_data(server: RunningServer, token: str, user_id: str, event_type: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s,
        s.get(f"{server.base_url}/_matrix/client/v3/user/{user_id}/account_data/{event_type}") as resp,
    ):
        assert resp.status == 200, event_type
        body: dict[str, Any] = await resp.json()
        return body


async def test_lost_store_comes_back_from_the_recovery_key(
    server: RunningServer, make_bot: BotFactory, peers: Peers, tmp_path: Path
) -> None:
    bot = make_bot(key_backup=True, secret_storage=True)

    @bot.command("echo")
    async def echo(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    async with running(bot, server):
        assert bot.client is not None and bot.secret_storage is not None
        recovery_key = bot.secret_storage.recovery_key
        assert recovery_key is not None
        token = str(bot.client.access_token)
        master_before = (await query_identity(bot.client, bot.user_id)).master_public
        alice = await peers("alice")
        room = await alice.create_room([bot.user_id])
        await alice.wait_for(joined(bot.user_id))
        secret_id = await alice.send_text(room, "!echo before the disk died")
        await alice.wait_for_reply(room, bot.user_id)
        await alice.send_text(room, "!echo again")
        await alice.wait_for_reply(room, bot.user_id)

    # The secrets are on the server, encrypted: no private key appears in clear.
    stored = json.loads((Path(bot.config.store_path) / "cross_signing.json").read_text())
    for name in (
        "m.cross_signing.master",
        "m.cross_signing.self_signing",
        "m.cross_signing.user_signing",
        "m.megolm_backup.v1",
    ):
        content = await account_data(server, token, bot.user_id, name)
        assert set(content) == {"encrypted"}, name
    ssk_content = await account_data(server, token, bot.user_id, "m.cross_signing.self_signing")
    assert stored["self_signing_seed"] not in json.dumps(ssk_content)

    # The store is gone. A new login with the recovery key keeps the identity and the history.
    again = Bot(
        str(tmp_path / "new-store"),
        homeserver=server.base_url,
        user_id=bot.user_id,
        password="password",
        key_backup=True,
        secret_storage=True,
        recovery_key=recovery_key,
        sync_timeout_ms=500,
    )
    try:
        client = await again.connect()
        identity = await query_identity(client, bot.user_id)
        assert identity.master_public == master_before
        assert identity.device_cross_signed(str(client.device_id))
        await again.sync_once()
        assert await history_body(again, room, secret_id) == "!echo before the disk died"
    finally:
        await again.close()

    # A wrong recovery key is refused with a clear error, before anything is changed.
    wrong = Bot(
        str(tmp_path / "third-store"),
        homeserver=server.base_url,
        user_id=bot.user_id,
        password="password",
        secret_storage=True,
        recovery_key=KEY1_RECOVERY_KEY,
    )
    with pytest.raises(BotError, match="does not unlock"):
        await wrong.connect()
    await wrong.close()
