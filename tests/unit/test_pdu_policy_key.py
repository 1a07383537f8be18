"""A PDU's signature check skips the Policy Server key ID (the spec: that key is not
published, so looking it up would only cost a key request to the sender's server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import signedjson.key

from bridge.keys import KeyRing, LocalKeys
from bridge.pdu import verify_signatures
from homeserver.clock import Clock
from homeserver.events import build_event, generate_signing_key
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.storage.schema import server_keys
from tests.support.database import migrated_sqlite


async def test_the_policy_server_key_is_not_looked_up(tmp_path: Path) -> None:
    remote_key = generate_signing_key("z_1")  # sorts after "policy_server"
    event = build_event(
        room_version=KNOWN_ROOM_VERSIONS["12"],
        room_id="!room:remote.example",
        type="m.room.message",
        sender="@bot:remote.example",
        content={"body": "hi"},
        prev_event_ids=[],
        auth_event_ids=[],
        depth=3,
        origin_server_ts=1_000,
        server_name="remote.example",
        signing_key=remote_key,
    )
    sigs = event.signatures["remote.example"]
    event.signatures["remote.example"] = {"ed25519:policy_server": "c2lnbmF0dXJl", **sigs}
    fetched: list[str] = []

    async def direct(server: str) -> dict[str, Any]:
        fetched.append(server)
        raise AssertionError("no key should be fetched")

    async def notary(server: str, wanted: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        return []

    async with migrated_sqlite(tmp_path / "db.sqlite") as db:
        async with db.write() as conn:
            verify = signedjson.key.get_verify_key(remote_key)
            await conn.execute(
                server_keys.insert().values(
                    server_name="remote.example",
                    key_id="ed25519:z_1",
                    verify_key=verify.encode(),
                    valid_until_ts=10**13,
                )
            )
        local = LocalKeys("here.example", generate_signing_key("a_1"), [], Clock())
        keyring = KeyRing(db, Clock(), local, direct, notary, [])
        await verify_signatures(event, keyring)
    assert fetched == []
