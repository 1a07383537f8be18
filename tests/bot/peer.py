"""A matrix-nio user (vodozemac E2EE) that talks to the bot in tests, one sync at a time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    JoinResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomSendResponse,
    SyncResponse,
)

from tests.support.server import RunningServer

ENCRYPTION_STATE = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


@dataclass
class Peer:
    client: AsyncClient
    events: list[tuple[str, Event]] = field(default_factory=list)
    consumed: int = 0
    txn: int = 0
    ephemeral: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    async def step(self, timeout: int = 0) -> SyncResponse:
        """One sync plus what nio's sync_forever does after it (keys, to-device)."""
        resp = await self.client.sync(timeout=timeout, full_state=False)
        assert isinstance(resp, SyncResponse), resp
        for room_id, info in resp.rooms.join.items():
            self.events.extend((room_id, e) for e in info.timeline.events)
            self.ephemeral.extend((room_id, e) for e in info.ephemeral)
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        if self.client.should_query_keys:
            await self.client.keys_query()
        if self.client.should_claim_keys:
            await self.client.keys_claim(self.client.get_users_for_key_claiming())
        await self.client.send_to_device_messages()
        return resp

    async def wait_for(
        self, predicate: Callable[[str, Event], bool], seconds: float = 20.0, include_seen: bool = False
    ) -> Event:
        """Sync until an event matching `predicate(room_id, event)` arrives (from anyone).

        Only events not yet seen by an earlier wait count, unless `include_seen`."""
        deadline = asyncio.get_running_loop().time() + seconds
        seen = 0 if include_seen else self.consumed
        while True:
            for index in range(seen, len(self.events)):
                room_id, event = self.events[index]
                if predicate(room_id, event):
                    self.consumed = max(self.consumed, index + 1)
                    return event
            seen = len(self.events)
            if asyncio.get_running_loop().time() > deadline:
                undecryptable = [e for _, e in self.events if isinstance(e, MegolmEvent)]
                raise AssertionError(
                    f"{self.user_id}: no matching event; {len(self.events)} seen, "
                    f"{len(undecryptable)} undecryptable: {[e.source.get('type') for _, e in self.events]}"
                )
            await self.step(timeout=300)

    async def wait_for_reply(self, room_id: str, sender: str, seconds: float = 20.0) -> Event:
        return await self.wait_for(
            lambda r, e: r == room_id and e.sender == sender and e.source.get("type") == "m.room.message",
            seconds,
        )

    async def send(self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message") -> str:
        resp = await self.client.room_send(room_id, event_type, content, ignore_unverified_devices=True)
        assert isinstance(resp, RoomSendResponse), resp
        return str(resp.event_id)

    async def send_encrypted(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Encrypt any event type, reactions included (nio's room_send leaves those in clear)."""
        self.client.olm.should_share_group_session(room_id)  # a session exists after a first send
        encrypted_type, encrypted = self.client.encrypt(room_id, event_type, content)
        self.txn += 1
        async with (
            aiohttp.ClientSession() as s,
            s.put(
                f"{self.client.homeserver}/_matrix/client/v3/rooms/{room_id}/send/{encrypted_type}/t{self.txn}",
                json=encrypted,
                headers={"Authorization": f"Bearer {self.client.access_token}"},
            ) as resp,
        ):
            body = await resp.json()
            assert resp.status == 200, body
            return str(body["event_id"])

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": body})

    async def create_room(self, invite: list[str], encrypted: bool = True) -> str:
        state = [ENCRYPTION_STATE] if encrypted else []
        resp = await self.client.room_create(invite=invite, initial_state=state)
        assert isinstance(resp, RoomCreateResponse), resp
        return str(resp.room_id)

    async def join(self, room_id: str) -> None:
        resp = await self.client.join(room_id)
        assert isinstance(resp, JoinResponse), resp

    async def close(self) -> None:
        await self.client.close()


async def login_peer(server: RunningServer, store_root: str, localpart: str) -> Peer:
    user_id = f"@{localpart}:{server.server_name}"
    if not await server.hs.accounts.user_exists(user_id):
        await server.register(localpart)
    return await login_peer_at(server.base_url, user_id, "password", store_root)


async def login_peer_at(base_url: str, user_id: str, password: str, store_root: str) -> Peer:
    """A nio user on any homeserver (Sotto or Synapse)."""
    store_path = os.path.join(store_root, user_id[1:].split(":", 1)[0])
    os.makedirs(store_path, exist_ok=True)
    client = AsyncClient(
        base_url,
        user_id,
        store_path=store_path,
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    resp = await client.login(password, device_name="peer-nio")
    assert isinstance(resp, LoginResponse), resp
    peer = Peer(client)
    await peer.step()
    return peer
