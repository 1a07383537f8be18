"""EDUs both ways: typing and receipts (and the room-scoped fan-out they share).

Inbound EDUs are applied only for users of the sending server who are joined to the room
(so one server cannot speak for another's users), and only in rooms whose server ACL admits
the sending server (checked per room; a denied room's part of a receipt EDU is dropped).
Outbound, typing is ephemeral (memory only) and receipts go through the persistent queue.
"""

from __future__ import annotations

import logging
from typing import Any

from bridge.acl import room_allows
from bridge.queue import OutboundQueue
from homeserver.errors import MatrixError
from homeserver.events.identifiers import domain_of
from homeserver.handlers.presence import PresenceHandler
from homeserver.server import HomeServer

log = logging.getLogger(__name__)

DEFAULT_TYPING_TIMEOUT_MS = 30_000


def _domain(identifier: str) -> str:
    try:
        return domain_of(identifier)
    except ValueError:
        return ""


async def room_servers(hs: HomeServer, room_id: str) -> set[str]:
    """Servers with a joined member in the room (this one included)."""
    return {_domain(u) for u in await hs.events.get_room_members(room_id, "join")} - {""}


PRESENCE_STATES = ("online", "unavailable", "offline")


class EduHandler:
    def __init__(self, hs: HomeServer, queue: OutboundQueue, presence: PresenceHandler | None = None) -> None:
        self.hs = hs
        self.queue = queue
        self.presence = presence

    async def _joined(self, room_id: str, user_id: str) -> bool:
        membership = await self.hs.events.get_membership(room_id, user_id)
        return membership is not None and membership[0] == "join"

    # Inbound ------------------------------------------------------------------------------------

    async def on_typing(self, origin: str, content: dict[str, Any]) -> None:
        room_id, user_id = content.get("room_id"), content.get("user_id")
        if not isinstance(room_id, str) or not isinstance(user_id, str) or _domain(user_id) != origin:
            return
        if not await room_allows(self.hs.events, room_id, origin):
            log.debug("dropping typing from %s in %s: denied by the server ACL", origin, room_id)
            return
        if not await self._joined(room_id, user_id):
            return
        timeout = content.get("timeout")
        timeout_ms = (
            timeout
            if isinstance(timeout, int) and not isinstance(timeout, bool)
            else DEFAULT_TYPING_TIMEOUT_MS
        )
        await self.hs.typing.set_typing(
            room_id, user_id, content.get("typing") is True, timeout_ms, local=False
        )

    async def on_receipt(self, origin: str, content: dict[str, Any]) -> None:
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                continue
            if not await room_allows(self.hs.events, room_id, origin):
                log.debug("dropping receipts from %s in %s: denied by the server ACL", origin, room_id)
                continue
            for receipt_type, by_user in by_type.items():
                if receipt_type != "m.read" or not isinstance(by_user, dict):
                    continue
                for user_id, data in by_user.items():
                    if _domain(user_id) != origin or not isinstance(data, dict):
                        continue
                    event_ids = data.get("event_ids")
                    if not isinstance(event_ids, list) or not event_ids or not isinstance(event_ids[0], str):
                        continue
                    if not await self._joined(room_id, user_id):
                        continue
                    raw_extra = data.get("data")
                    extra: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
                    ts = extra.get("ts")
                    thread = extra.get("thread_id")
                    try:
                        await self.hs.receipts.post_receipt(
                            user_id,
                            room_id,
                            "m.read",
                            event_ids[0],
                            thread_id=thread if isinstance(thread, str) else None,
                            ts=ts if isinstance(ts, int) else None,
                            local=False,
                        )
                    except MatrixError as e:
                        log.info("dropping a receipt from %s: %s", origin, e.message)

    async def on_presence(self, origin: str, content: dict[str, Any]) -> None:
        """Remote users' presence, stored for local users who share a room with them.

        (PresenceHandler has no entry point for remote users yet, so its store is written
        directly and the notifier woken, as its own writes do.)"""
        if self.presence is None:
            return
        pushes = content.get("push")
        if not isinstance(pushes, list):
            return
        now = self.hs.clock.time_ms()
        for push in pushes[:1000]:
            if not isinstance(push, dict):
                continue
            user_id, state = push.get("user_id"), push.get("presence")
            if not isinstance(user_id, str) or _domain(user_id) != origin or state not in PRESENCE_STATES:
                continue
            ago = push.get("last_active_ago")
            last_active = now - ago if isinstance(ago, int) and ago >= 0 else now
            status = push.get("status_msg")
            await self.presence.store.set(
                user_id,
                state,
                status[:1024] if isinstance(status, str) else None,
                last_active,
                push.get("currently_active") is True,
            )
            memberships = await self.hs.events.get_memberships_for_user(user_id)
            rooms = [r for r, m, _, _ in memberships if m == "join"]
            self.hs.notifier.notify(rooms=rooms, users=[user_id])

    async def on_local_presence(self, user_id: str, content: dict[str, Any]) -> None:
        servers: set[str] = set()
        for room_id, membership, _, _ in await self.hs.events.get_memberships_for_user(user_id):
            if membership == "join":
                servers |= await room_servers(self.hs, room_id)
        servers -= {self.hs.server_name, ""}
        if servers:
            self.queue.send_ephemeral("m.presence", {"push": [{"user_id": user_id, **content}]}, servers)

    # Outbound -----------------------------------------------------------------------------------

    async def on_local_edu(self, edu_type: str, data: dict[str, Any]) -> None:
        room_id = data.get("room_id")
        if not isinstance(room_id, str):
            return
        destinations = await room_servers(self.hs, room_id) - {self.hs.server_name}
        if not destinations:
            return
        if edu_type == "m.typing":
            content = {"room_id": room_id, "user_id": data["user_id"], "typing": bool(data.get("typing"))}
            self.queue.send_ephemeral("m.typing", content, destinations)
        elif edu_type == "m.receipt":
            receipt_data: dict[str, Any] = {"ts": data.get("ts")}
            if data.get("thread_id"):
                receipt_data["thread_id"] = data["thread_id"]
            content = {
                room_id: {
                    "m.read": {data["user_id"]: {"event_ids": [data["event_id"]], "data": receipt_data}}
                }
            }
            await self.queue.send_edu("m.receipt", content, destinations)
