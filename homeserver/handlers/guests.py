"""Guest accounts: `POST /register?kind=guest` (when `registration.allow_guests`), and the
rooms guests may be in.

Guests get an access token and no password, and reach only the endpoints the spec's guest
access module lists (each handler passes `allow_guest=True`; the others answer 403
M_GUEST_ACCESS_FORBIDDEN). They join only rooms this server holds whose
m.room.guest_access is `can_join`, and leave every such room whose guest access is turned
off (the spec's MUST), whoever turned it off and on whichever server.
"""

from __future__ import annotations

import logging
import secrets

from homeserver.errors import Codes, MatrixError
from homeserver.events import Event
from homeserver.handlers.rooms import RoomHandler
from homeserver.storage.accounts import AccountStore
from homeserver.storage.events import EventStore

log = logging.getLogger(__name__)

GUEST_ACCESS = ("m.room.guest_access", "")


def guest_localpart() -> str:
    # Numeric, like Synapse's guests; 48 random bits make a clash (retried) vanishingly rare.
    return str(secrets.randbits(48))


class GuestHandler:
    def __init__(
        self, events: EventStore, accounts: AccountStore, rooms: RoomHandler, server_name: str
    ) -> None:
        self.events = events
        self.accounts = accounts
        self.rooms = rooms
        self.server_name = server_name

    async def can_join(self, room_id: str) -> bool:
        state = await self.events.get_current_state(room_id, [GUEST_ACCESS])
        stored = state.get(GUEST_ACCESS)
        return stored is not None and stored.event.content.get("guest_access") == "can_join"

    async def require_can_join(self, room_id_or_alias: str) -> None:
        refused = MatrixError(403, Codes.FORBIDDEN, "Guests may not join this room")
        try:
            room_id, _ = await self.rooms.resolve_room(room_id_or_alias)
        except MatrixError:
            raise refused from None
        if await self.events.get_room_version(room_id) is None or not await self.can_join(room_id):
            raise refused

    async def on_event(self, event: Event, _stream_id: int) -> None:
        """After any persisted event: if it turned a room's guest access off, guests leave."""
        if event.type != GUEST_ACCESS[0] or event.state_key != GUEST_ACCESS[1]:
            return
        if event.content.get("guest_access") == "can_join" or await self.can_join(event.room_id):
            return
        for user_id in await self.events.get_room_members(event.room_id, "join"):
            if not user_id.endswith(":" + self.server_name):
                continue
            user = await self.accounts.get_user(user_id)
            if user is None or not user["is_guest"]:
                continue
            try:
                await self.rooms.set_membership(
                    user_id, event.room_id, user_id, "leave", "Guest access was turned off"
                )
            except MatrixError as e:
                log.warning("could not remove guest %s from %s: %s", user_id, event.room_id, e)
