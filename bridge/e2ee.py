"""End-to-end encryption over federation: device lists, key queries and claims, to-device.

Outbound: the E2EE handlers' hooks ask remote servers for their users' keys
(`/user/keys/query`, `/user/keys/claim`), hand to-device messages for remote users to the
persistent queue (`m.direct_to_device`) and announce local device changes to every server
sharing a room with the user (`m.device_list_update`, with no `prev_id`, which makes the
receiver fetch the full list from `/user/devices`).

Inbound: `/user/devices`, `/user/keys/query`, `/user/keys/claim` for local users, and the
`m.direct_to_device`, `m.device_list_update` and `m.signing_key_update` EDUs, accepted only
for users of the sending server.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from bridge.client import FederationClient, fed_path
from bridge.queue import OutboundQueue
from homeserver.api.keys import E2EEServices
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.events.identifiers import domain_of
from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_QUERY_USERS = 1000


def _domain(identifier: str) -> str:
    try:
        return domain_of(identifier)
    except ValueError:
        return ""


class FederatedE2EE:
    def __init__(
        self, hs: HomeServer, services: E2EEServices, client: FederationClient, queue: OutboundQueue
    ) -> None:
        self.hs = hs
        self.services = services
        self.client = client
        self.queue = queue
        self._device_stream = 0

    def install(self) -> None:
        self.services.keys.remote_query = self.remote_query
        self.services.keys.remote_claim = self.remote_claim
        self.services.to_device.remote_senders.append(self.send_to_device)
        self.services.device_lists.on_local_change.append(self.on_local_device_change)

    # Outbound -----------------------------------------------------------------------------------

    async def remote_query(self, server: str, users: dict[str, list[str]], timeout_ms: int) -> dict[str, Any]:
        body = await self.client.post(
            server,
            "/_matrix/federation/v1/user/keys/query",
            {"device_keys": users},
            timeout=max(1.0, min(timeout_ms, 30_000) / 1000),
        )
        return body if isinstance(body, dict) else {}

    async def remote_claim(
        self, server: str, users: dict[str, dict[str, str]], timeout_ms: int
    ) -> dict[str, Any]:
        body = await self.client.post(
            server,
            "/_matrix/federation/v1/user/keys/claim",
            {"one_time_keys": users},
            timeout=max(1.0, min(timeout_ms, 30_000) / 1000),
        )
        return body if isinstance(body, dict) else {}

    async def send_to_device(
        self, sender: str, event_type: str, message_id: str, messages: dict[str, dict[str, Any]]
    ) -> None:
        by_server: dict[str, dict[str, dict[str, Any]]] = {}
        for user_id, devices in messages.items():
            by_server.setdefault(_domain(user_id), {})[user_id] = devices
        for server, msgs in by_server.items():
            content = {"sender": sender, "type": event_type, "message_id": message_id, "messages": msgs}
            await self.queue.send_edu("m.direct_to_device", content, {server})

    async def on_local_device_change(self, user_id: str) -> None:
        servers: set[str] = set()
        for room_id, membership, _, _ in await self.hs.events.get_memberships_for_user(user_id):
            if membership == "join":
                servers |= {_domain(u) for u in await self.hs.events.get_room_members(room_id, "join")}
        servers -= {self.hs.server_name, ""}
        if not servers:
            return
        devices = await self.hs.accounts.list_devices(user_id)
        self._device_stream = max(self._device_stream + 1, self.hs.clock.time_ms())
        content = {
            "user_id": user_id,
            "device_id": devices[0].device_id if devices else "",
            "stream_id": self._device_stream,
            # No prev_id: the receiver re-fetches the whole list from /user/devices.
            "prev_id": [],
            "deleted": False,
        }
        await self.queue.send_edu("m.device_list_update", content, servers)

    # Inbound EDUs -------------------------------------------------------------------------------

    async def on_direct_to_device(self, origin: str, content: dict[str, Any]) -> None:
        sender = content.get("sender")
        event_type = content.get("type")
        message_id = content.get("message_id")
        messages = content.get("messages")
        if not isinstance(sender, str) or _domain(sender) != origin:
            return
        if not isinstance(event_type, str) or not isinstance(messages, dict):
            return
        await self.services.to_device.deliver_from_remote(
            sender, event_type, message_id if isinstance(message_id, str) else "", messages
        )

    async def on_device_list_update(self, origin: str, content: dict[str, Any]) -> None:
        user_id = content.get("user_id")
        if isinstance(user_id, str) and _domain(user_id) == origin:
            await self.services.device_lists.mark_and_notify([user_id])

    # Inbound queries ----------------------------------------------------------------------------

    def _local(self, user_id: Any) -> str:
        if not isinstance(user_id, str) or _domain(user_id) != self.hs.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "User is not local to this server")
        return user_id

    async def on_user_devices(self, user_id: str) -> dict[str, Any]:
        self._local(user_id)
        if not await self.hs.accounts.user_exists(user_id):
            raise not_found("Unknown user")
        store = self.services.keys.store
        keys = (await store.get_device_keys({user_id: []})).get(user_id, {})
        devices = []
        for row in await self.hs.accounts.list_devices(user_id):
            entry: dict[str, Any] = {"device_id": row.device_id}
            if row.display_name:
                entry["device_display_name"] = row.display_name
            if row.device_id in keys:
                entry["keys"] = keys[row.device_id]
                entry.pop("unsigned", None)
            devices.append(entry)
        # Stream IDs are time-based, so they keep increasing across restarts.
        self._device_stream = max(self._device_stream, self.hs.clock.time_ms())
        out: dict[str, Any] = {
            "user_id": user_id,
            "stream_id": self._device_stream,
            "devices": devices,
        }
        cross = (await store.get_cross_signing_keys([user_id], viewer=None)).get(user_id, {})
        if "master" in cross:
            out["master_key"] = cross["master"]
        if "self_signing" in cross:
            out["self_signing_key"] = cross["self_signing"]
        return out

    async def on_keys_query(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = body.get("device_keys")
        if not isinstance(wanted, dict) or len(wanted) > MAX_QUERY_USERS:
            raise MatrixError(400, Codes.BAD_JSON, "device_keys must be an object of at most 1000 users")
        query = {
            u: [d for d in devices if isinstance(d, str)] if isinstance(devices, list) else []
            for u, devices in wanted.items()
            if isinstance(u, str) and _domain(u) == self.hs.server_name
        }
        store = self.services.keys.store
        device_keys: dict[str, Any] = {u: {} for u in query}
        device_keys.update(await store.get_device_keys(query))
        master: dict[str, Any] = {}
        self_signing: dict[str, Any] = {}
        for user_id, keys in (await store.get_cross_signing_keys(list(query), viewer=None)).items():
            if "master" in keys:
                master[user_id] = keys["master"]
            if "self_signing" in keys:
                self_signing[user_id] = keys["self_signing"]
        return {"device_keys": device_keys, "master_keys": master, "self_signing_keys": self_signing}

    async def on_keys_claim(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = body.get("one_time_keys")
        if not isinstance(wanted, dict):
            raise MatrixError(400, Codes.BAD_JSON, "one_time_keys must be an object")
        claims = [
            (u, d, a)
            for u, devices in wanted.items()
            if isinstance(u, str) and _domain(u) == self.hs.server_name and isinstance(devices, dict)
            for d, a in devices.items()
            if isinstance(d, str) and isinstance(a, str)
        ][:10_000]
        keys = await self.services.keys.store.claim(claims) if claims else {}
        return {"one_time_keys": keys}

    # Routes ---------------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Any]]:
        async def user_devices(request: web.Request, origin: str, content: Any) -> Any:
            return await self.on_user_devices(request.match_info["user_id"])

        async def keys_query(request: web.Request, origin: str, content: Any) -> Any:
            return await self.on_keys_query(content if isinstance(content, dict) else {})

        async def keys_claim(request: web.Request, origin: str, content: Any) -> Any:
            return await self.on_keys_claim(content if isinstance(content, dict) else {})

        return [
            ("GET", "/_matrix/federation/v1/user/devices/{user_id}", user_devices),
            ("POST", "/_matrix/federation/v1/user/keys/query", keys_query),
            ("POST", "/_matrix/federation/v1/user/keys/claim", keys_claim),
        ]


__all__ = ["FederatedE2EE", "fed_path"]
