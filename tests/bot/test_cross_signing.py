"""Cross-signing: keys and signatures checked with python-olm, an independent Ed25519 implementation."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from canonicaljson import encode_canonical_json
from olm.pk import PkSigning
from olm.utility import ed25519_verify

from clients.crosssigning import (
    CrossSigning,
    CrossSigningError,
    CrossSigningKeys,
    UserIdentity,
    public_key,
    sign_json,
    verify_signature,
)
from clients.store import StoreDir
from tests.bot.conftest import BotFactory, running
from tests.bot.peer import Peer
from tests.support.server import RunningServer

Peers = Callable[[str], Awaitable[Peer]]


def olm_verify(obj: dict[str, Any], user_id: str, public: str) -> None:
    """Raises unless `obj` carries a valid signature by `public` (python-olm's verifier)."""
    signature = obj["signatures"][user_id][f"ed25519:{public}"]
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    ed25519_verify(public, encode_canonical_json(unsigned), signature)


def test_keys_and_signatures_match_python_olm() -> None:
    seed = bytes(range(32))
    signer = PkSigning(seed)
    assert public_key(seed) == signer.public_key
    obj = {"user_id": "@b:x", "usage": ["master"], "keys": {"ed25519:k": "k"}, "unsigned": {"ignored": 1}}
    signed = sign_json(obj, seed, "@b:x", f"ed25519:{signer.public_key}")
    # Ed25519 is deterministic: both implementations give the same signature.
    assert signed["signatures"]["@b:x"][f"ed25519:{signer.public_key}"] == signer.sign(
        encode_canonical_json({k: v for k, v in obj.items() if k != "unsigned"}).decode()
    )
    olm_verify(signed, "@b:x", signer.public_key)
    assert verify_signature(signed, "@b:x", f"ed25519:{signer.public_key}", signer.public_key)
    tampered = {**signed, "usage": ["self_signing"]}
    assert not verify_signature(tampered, "@b:x", f"ed25519:{signer.public_key}", signer.public_key)


def test_stored_keys_round_trip_and_master_is_dropped_by_default() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.upload_body("@b:x")
    olm_verify(body["self_signing_key"], "@b:x", keys.master_public)
    olm_verify(body["user_signing_key"], "@b:x", keys.master_public)
    stored = json.loads(json.dumps(keys.to_json(keep_master=False)))
    assert "master_seed" not in stored
    again = CrossSigningKeys.from_json(stored)
    assert again.master_seed is None and again.self_signing_public == keys.self_signing_public
    kept = CrossSigningKeys.from_json(keys.to_json(keep_master=True))
    assert kept.master_seed == keys.master_seed


async def keys_query(server: RunningServer, token: str, user_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{server.base_url}/_matrix/client/v3/keys/query",
            json={"device_keys": {user_id: []}},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_cross_signing_is_visible_to_other_users(
    server: RunningServer, make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = make_bot()
    async with running(bot, server):
        assert bot.client is not None
        device_id = str(bot.client.device_id)
    alice = await server.login("alice")
    body = await keys_query(server, alice["access_token"], bot.user_id)
    master = body["master_keys"][bot.user_id]
    ssk = body["self_signing_keys"][bot.user_id]
    assert master["usage"] == ["master"] and ssk["usage"] == ["self_signing"]
    master_pub = next(iter(master["keys"].values()))
    ssk_pub = next(iter(ssk["keys"].values()))
    olm_verify(ssk, bot.user_id, master_pub)
    device = body["device_keys"][bot.user_id][device_id]
    olm_verify(device, bot.user_id, ssk_pub)
    # The user-signing key is private to its owner.
    assert bot.user_id not in body.get("user_signing_keys", {})
    # The master key is also signed by the device, for peers migrating from device trust.
    device_ed25519 = device["keys"][f"ed25519:{device_id}"]
    master_unsigned = {k: v for k, v in master.items() if k not in ("signatures", "unsigned")}
    ed25519_verify(
        device_ed25519,
        encode_canonical_json(master_unsigned),
        master["signatures"][bot.user_id][f"ed25519:{device_id}"],
    )
    # The master private key was not kept on disk (spec: no secure storage → do not store it).
    stored = json.loads((Path(bot.config.store_path) / "cross_signing.json").read_text())
    assert "master_seed" not in stored
    assert (Path(bot.config.store_path) / "cross_signing.json").stat().st_mode & 0o077 == 0

    # A restart reuses the identity: nothing is re-uploaded, the device stays signed.
    again = make_bot()
    async with running(again, server):
        pass
    body2 = await keys_query(server, alice["access_token"], bot.user_id)
    assert body2["master_keys"][bot.user_id]["keys"] == master["keys"]


async def test_existing_foreign_identity_is_not_replaced_silently(
    server: RunningServer, make_bot: BotFactory, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_bot(store="store-a")
    async with running(first, server):
        pass
    alice = await server.login("alice")
    before = (await keys_query(server, alice["access_token"], first.user_id))["master_keys"]
    # A second store for the same account (e.g. a fresh deployment) must not clobber the identity.
    second = make_bot(store="store-b")
    async with running(second, server):
        pass
    after = (await keys_query(server, alice["access_token"], first.user_id))["master_keys"]
    assert before == after
    assert "already has cross-signing keys" in caplog.text


async def test_sign_device_refuses_keys_other_than_the_verified_ones(tmp_path: Path) -> None:
    """After a verification, the device object the server serves must carry the proven key."""
    client: Any = SimpleNamespace(user_id="@b:x")  # no request may reach a homeserver
    cross_signing = CrossSigning(client, StoreDir(tmp_path))
    cross_signing.keys = CrossSigningKeys.generate()
    device = {"user_id": "@b:x", "device_id": "DEV", "keys": {"ed25519:DEV": "served-key"}}
    server = UserIdentity(None, None, None, {"DEV": device})
    with pytest.raises(CrossSigningError, match="not the verified ones"):
        await cross_signing.sign_device("DEV", server, ed25519="verified-key")
