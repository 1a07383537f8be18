"""Closing an account, for the user (POST /account/deactivate, the OAuth account pages) and
for a server admin alike: signed out everywhere, locked, optionally erased (the profile
goes, and the user's events reach those who were not in the room at the time pruned:
homeserver/handlers/erasure.py), and out of its rooms. Its delayed events and email
addresses go with the account row's update (storage/accounts.py): an address of a closed
account is free for another and resets no password."""

from __future__ import annotations

import logging

from homeserver.handlers.auth import AuthHandler
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.event_creation import EventCreator
from homeserver.storage.accounts import AccountStore
from homeserver.storage.events import EventStore

log = logging.getLogger(__name__)


async def leave_rooms(
    events: EventStore, creator: EventCreator, user_id: str, only_room: str | None = None
) -> list[str]:
    """Make `user_id` leave every room (or `only_room`) they are joined, invited or knocking
    in; returns the rooms left. Best effort: one room failing does not stop the others."""
    left: list[str] = []
    for room_id, membership, _, _ in await events.get_memberships_for_user(user_id):
        if membership not in ("join", "invite", "knock") or (only_room and room_id != only_room):
            continue
        try:
            await creator.create_and_send(
                room_id=room_id,
                type="m.room.member",
                sender=user_id,
                content={"membership": "leave"},
                state_key=user_id,
            )
            left.append(room_id)
        except Exception:
            log.exception("could not remove %s from %s", user_id, room_id)
    return left


class Deactivator:
    def __init__(
        self,
        accounts: AccountStore,
        devices: DeviceHandler,
        auth: AuthHandler,
        events: EventStore,
        creator: EventCreator,
    ) -> None:
        self.accounts = accounts
        self.devices = devices
        self.auth = auth
        self.events = events
        self.creator = creator

    async def deactivate(self, user_id: str, *, erase: bool = False) -> None:
        user = await self.accounts.get_user(user_id)
        already = bool(user and user["deactivated"])
        await self.devices.delete_devices(user_id, None)
        await self.accounts.deactivate(user_id)
        self.auth.invalidate_user(user_id)
        if erase:
            # Before the leaves: those are the user's events too.
            await self.accounts.erase(user_id)
        if not already:
            await leave_rooms(self.events, self.creator, user_id)
        log.info("deactivated %s", user_id)
