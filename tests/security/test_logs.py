"""Logs are free of access tokens, passwords, keys and message bodies.

`sotto serve` runs as a real subprocess at DEBUG level (the most it will ever log) while
matrix-nio clients with E2EE register, log in, exchange encrypted and plain messages,
upload and claim keys, upload media, and a hostile client sends tokens in query strings,
bad passwords and malformed bodies. Every secret involved is then searched for in
everything the process wrote.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    UploadResponse,
)

from tests.integration.e2ee.nio_helpers import NioUser
from tests.security.process import SottoProcess

PASSWORDS = {"alice": "alice-Pa55word-7f3c9e", "bob": "bob-Pa55word-1b8d2a"}
PLAIN_BODY = "plain-body-4e1f0c-should-never-be-logged"
E2EE_BODY = "e2ee-body-9a7b3d-should-never-be-logged"
MEDIA_BODY = b"media-body-2c6e8f-should-never-be-logged"


async def _client(server: SottoProcess, root: Path, name: str) -> tuple[NioUser, list[str]]:
    store = root / f"store-{name}"
    os.makedirs(store, exist_ok=True)
    client = AsyncClient(
        server.base_url,
        f"@{name}:{server.server_name}",
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    registered = await client.register(name, PASSWORDS[name], device_name="reg")
    assert isinstance(registered, RegisterResponse), registered
    tokens = [registered.access_token]
    logged_in = await client.login(PASSWORDS[name], device_name="main")
    assert isinstance(logged_in, LoginResponse), logged_in
    tokens.append(logged_in.access_token)
    user = NioUser(client)

    async def on_text(room: object, event: object) -> None:
        user.texts.append((getattr(room, "room_id", ""), getattr(event, "body", "")))

    from nio import RoomMessageText

    client.add_event_callback(on_text, RoomMessageText)
    await user.step()
    return user, tokens


async def _hostile(server: SottoProcess, token: str) -> None:
    base = server.base_url + "/_matrix/client/v3"
    async with aiohttp.ClientSession() as http:
        # A token in the query string (refused, MSC4127), a wrong password, a bad token.
        async with http.get(base + "/sync", params={"access_token": token}) as resp:
            assert resp.status == 401
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}}
        async with http.post(
            base + "/login", json={**body, "password": PASSWORDS["alice"] + "-wrong"}
        ) as resp:
            assert resp.status == 403
        async with http.get(base + "/account/whoami", headers={"Authorization": f"Bearer {token}x"}) as resp:
            assert resp.status == 401
        auth = {"Authorization": f"Bearer {token}"}
        # Malformed and non-canonical bodies that carry a secret.
        async with http.post(base + "/createRoom", data=f"{{{PLAIN_BODY}", headers=auth) as resp:
            assert resp.status == 400
        async with http.post(base + "/createRoom", json={}, headers=auth) as resp:
            room = (await resp.json())["room_id"]
        url = f"{base}/rooms/{quote(room)}/send/m.room.message/float"
        async with http.put(url, json={"body": PLAIN_BODY, "n": 1.5}, headers=auth) as resp:
            assert resp.status == 400
        # A password change and a failed UIA attempt.
        async with http.post(
            base + "/account/password",
            json={"new_password": PASSWORDS["alice"] + "-new", "auth": {"type": "m.login.password"}},
            headers=auth,
        ) as resp:
            assert resp.status in (400, 401)


def _stored_keys(db_path: Path) -> list[str]:
    """Every key the server stored for clients: device keys, one-time and fallback keys."""
    found: list[str] = []
    with sqlite3.connect(db_path) as conn:
        for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys"):
            for (key_json,) in conn.execute(f"SELECT key_json FROM {table}"):
                found.extend(_key_strings(key_json))
    return found


def _key_strings(raw: str) -> list[str]:
    import json

    out: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and len(value) >= 40:
            out.append(value)  # base64 keys and signatures

    walk(json.loads(raw))
    return out


async def test_logs_hold_no_secrets(tmp_path: Path) -> None:
    server = SottoProcess(
        tmp_path,
        log_level="DEBUG",
        registration={"enabled": True, "requires_token": False},
    )
    await server.start()
    clients: list[NioUser] = []
    try:
        alice, alice_tokens = await _client(server, tmp_path, "alice")
        clients.append(alice)
        bob, bob_tokens = await _client(server, tmp_path, "bob")
        clients.append(bob)
        room = await alice.create_encrypted_room([bob.user_id])
        await bob.step()
        await bob.join(room)
        await alice.step()
        await alice.send_text(room, E2EE_BODY)
        await bob.wait_for_text(room, E2EE_BODY)
        plain = await alice.client.room_create(invite=[bob.user_id])
        assert isinstance(plain, RoomCreateResponse)
        await alice.step()
        await alice.client.room_send(
            plain.room_id, "m.room.message", {"msgtype": "m.text", "body": PLAIN_BODY}
        )
        upload, _ = await bob.client.upload(
            lambda *_: MEDIA_BODY, content_type="text/plain", filesize=len(MEDIA_BODY)
        )
        assert isinstance(upload, UploadResponse), upload
        await _hostile(server, alice_tokens[-1])
        identity_keys = [
            *alice.client.olm.account.identity_keys.values(),
            *bob.client.olm.account.identity_keys.values(),
        ]
    finally:
        for client in clients:
            await client.close()
        server.stop()

    logs = server.logs()
    # The test means something only if the server did log at DEBUG level.
    assert "registered @alice" in logs and len(logs.splitlines()) > 5, logs[:2000]
    signing_key = (tmp_path / "data" / "signing.key").read_text().split()[-1]
    secrets = {
        **{f"token {i}": t for i, t in enumerate(alice_tokens + bob_tokens)},
        **{f"password {n}": p for n, p in PASSWORDS.items()},
        "plain body": PLAIN_BODY,
        "e2ee body": E2EE_BODY,
        "media": MEDIA_BODY.decode(),
        "server signing key": signing_key,
        "registration shared secret": str(server.config["registration"]["shared_secret"]),
        **{f"identity key {i}": k for i, k in enumerate(identity_keys)},
        **{f"stored key {i}": k for i, k in enumerate(_stored_keys(tmp_path / "data" / "homeserver.db"))},
    }
    assert len(secrets) > 20
    leaked = {name for name, secret in secrets.items() if secret and secret in logs}
    assert leaked == set(), [line for line in logs.splitlines() if any(s in line for s in secrets.values())][
        :5
    ]
