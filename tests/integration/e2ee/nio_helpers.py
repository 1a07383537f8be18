"""matrix-nio (vodozemac) clients for the E2EE scenarios, driven one sync at a time.

`NioUser.step()` does what nio's `sync_forever` does after each sync (upload keys,
query outdated device lists, claim keys, flush queued to-device messages), so a test
controls exactly when each side talks to the server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.crypto import OlmDevice

from tests.support.server import RunningServer

ENCRYPTION_STATE = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


@dataclass
class NioUser:
    client: AsyncClient
    # (room_id, body) of every decrypted text message seen, in order.
    texts: list[tuple[str, str]] = field(default_factory=list)
    undecryptable: list[MegolmEvent] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    async def step(self, timeout: int = 0) -> SyncResponse:
        resp = await self.client.sync(timeout=timeout, full_state=False)
        assert isinstance(resp, SyncResponse), resp
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        if self.client.should_query_keys:
            await self.client.keys_query()
        if self.client.should_claim_keys:
            await self.client.keys_claim(self.client.get_users_for_key_claiming())
        await self.client.send_to_device_messages()
        return resp

    async def wait_until_can_encrypt_for(self, room_id: str, user_ids: list[str], rounds: int = 40) -> None:
        """Until this client knows a device of each user and holds an Olm session with each
        of their devices. Over federation the key query and claim are relayed server to
        server; nio sends a room key only to devices it has a session with, and a claim that
        came back empty the first time leaves the message undecryptable for good."""
        for _ in range(rounds):
            await self.step(timeout=0)
            known = all(list(self.client.device_store.active_user_devices(u)) for u in user_ids)
            missing = self.client.get_missing_sessions(room_id)
            if known and not any(missing.get(u) for u in user_ids):
                return
            if missing:
                await self.client.keys_claim(missing)
            else:
                await self.client.keys_query()
        raise AssertionError(f"{self.user_id} never had a session with every device of {user_ids}")

    async def wait_for_text(self, room_id: str, body: str, rounds: int = 40) -> None:
        for _ in range(rounds):
            if (room_id, body) in self.texts:
                return
            await self.step(timeout=500)
        raise AssertionError(
            f"{self.user_id}/{self.device_id} never decrypted {body!r}; undecryptable: "
            f"{len(self.undecryptable)}; got {self.texts}"
        )

    async def send_text(self, room_id: str, body: str) -> str:
        resp = await self.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
        )
        assert isinstance(resp, RoomSendResponse), resp
        return str(resp.event_id)

    async def create_encrypted_room(self, invite: list[str]) -> str:
        resp = await self.client.room_create(invite=invite, initial_state=[ENCRYPTION_STATE])
        assert isinstance(resp, RoomCreateResponse), resp
        return str(resp.room_id)

    async def join(self, room_id: str) -> None:
        resp = await self.client.join(room_id)
        assert isinstance(resp, JoinResponse), resp

    def device(self, user_id: str, device_id: str) -> OlmDevice:
        device: OlmDevice = self.client.device_store[user_id][device_id]
        return device

    async def close(self) -> None:
        await self.client.close()


async def nio_login(
    server: RunningServer, store_root: str, localpart: str, device_name: str = "nio"
) -> NioUser:
    user_id = f"@{localpart}:{server.server_name}"
    if not await server.hs.accounts.user_exists(user_id):
        await server.register(localpart)
    store_path = os.path.join(store_root, f"{localpart}-{device_name}")
    os.makedirs(store_path, exist_ok=True)
    client = AsyncClient(
        server.base_url,
        user_id,
        store_path=store_path,
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    resp = await client.login("password", device_name=device_name)
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
