"""Server notices (the spec's module): official messages from the server to a local user,
in one room per user tagged `m.server_notice`.

A system user (`server_notices.localpart`, created on first use, with no password) creates
the room, invites the user and tags the room for them; the user cannot send in it
(`users_default` -10) and cannot reject the invite (M_CANNOT_LEAVE_SERVER_NOTICE_ROOM), but
may leave once joined, after which the next notice opens a new room. Notices are sent by
server admins (the admin API's `send_server_notice`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import IntegrityError

from homeserver.clock import Clock
from homeserver.config import ServerNoticesConfig
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.handlers.rooms import RoomHandler
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.accounts import AccountStore
from homeserver.storage.event_types import TxnInfo
from homeserver.storage.events import EventStore
from homeserver.sync.notifier import Notifier

log = logging.getLogger(__name__)

TAG = "m.server_notice"
# The system user's device name in transaction IDs (it has no real device).
TXN_DEVICE = "SERVER_NOTICES"


class ServerNotices:
    def __init__(
        self,
        config: ServerNoticesConfig,
        server_name: str,
        accounts: AccountStore,
        events: EventStore,
        rooms: RoomHandler,
        account_data: AccountDataStore,
        notifier: Notifier,
        clock: Clock,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.events = events
        self.rooms = rooms
        self.account_data = account_data
        self.notifier = notifier
        self.clock = clock
        self.system_user = f"@{config.localpart}:{server_name}" if config.localpart else None
        # Finding or making a user's room is serialised (notices are rare): racing notices to
        # one user share one room, on this process.
        self._room_lock = asyncio.Lock()
        self._system_user_exists = False

    async def send(
        self,
        user_id: str,
        content: dict[str, Any],
        type: str = "m.room.message",
        state_key: str | None = None,
        txn_id: str | None = None,
    ) -> str:
        """Send a notice to a local user; returns the event ID."""
        system = self.system_user
        if system is None:
            raise MatrixError(400, Codes.UNKNOWN, "Server notices are not enabled on this server")
        if not self.rooms.is_local_user(user_id):
            raise MatrixError(400, Codes.INVALID_PARAM, "Server notices can only be sent to local users")
        user = await self.accounts.get_user(user_id)
        if user is None or user.get("deactivated"):
            raise not_found("Unknown user")
        await self._ensure_system_user(system)
        async with self._room_lock:
            room_id = await self._room_for(system, user_id)
        txn = TxnInfo(system, TXN_DEVICE, txn_id) if txn_id is not None and state_key is None else None
        event, _ = await self.rooms.creator.create_and_send(
            room_id=room_id, type=type, sender=system, content=content, state_key=state_key, txn=txn
        )
        return event.event_id

    async def _ensure_system_user(self, system: str) -> None:
        if self._system_user_exists:
            return
        if await self.accounts.get_user(system) is None:
            try:
                await self.accounts.create_user(
                    system, None, self.clock.time_ms(), displayname=self.config.display_name
                )
                log.info("created the server notices user %s", system)
            except IntegrityError:
                pass  # another worker created it first
        self._system_user_exists = True

    async def _room_for(self, system: str, user_id: str) -> str:
        """The user's notices room: the one tagged for them that they are still invited to
        or joined, else a new one."""
        tagged = await self.account_data.of_type_by_room(user_id, "m.tag")
        for room_id, content in tagged.items():
            tags = content.get("tags")
            if not isinstance(tags, dict) or TAG not in tags:
                continue
            theirs = await self.events.get_membership(room_id, user_id)
            ours = await self.events.get_membership(room_id, system)
            if (
                theirs is not None
                and theirs[0] in ("invite", "join")
                and ours is not None
                and ours[0] == "join"
            ):
                return room_id
        room_id, _ = await self.rooms.create_room(
            system,
            {
                "preset": "private_chat",
                "name": self.config.room_name,
                "power_level_content_override": {"users_default": -10},
            },
        )
        await self.rooms.invite(system, room_id, user_id)
        await self.account_data.set(user_id, room_id, "m.tag", {"tags": {TAG: {"order": 0.5}}})
        self.notifier.notify(users=[user_id])
        return room_id

    async def is_notice_invite(self, room_id: str, user_id: str) -> bool:
        """Whether the user's pending invite to the room is from the system user."""
        if self.system_user is None:
            return False
        membership = await self.events.get_membership(room_id, user_id)
        if membership is None or membership[0] != "invite":
            return False
        invite = await self.events.get_event(membership[1])
        return invite is not None and invite.event.sender == self.system_user
