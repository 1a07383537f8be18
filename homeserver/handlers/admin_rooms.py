"""Room repair tools of the admin API, in Synapse's shape: make a user a room's admin, list
or trim a room's forward extremities, fetch any stored event.

`make_room_admin` acts as a joined local member with the room's top power (in room versions
with privileged creators, v12, a creator: they outrank everyone and are not listed in
`users`). The new power levels and the invite are that member's own events through the
EventCreator and the RoomHandler, so the auth rules check them like any other.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.events import Event, get_power_level
from homeserver.events.auth_base import room_creators
from homeserver.handlers.admin import AdminHandler
from homeserver.handlers.client_format import client_event
from homeserver.handlers.event_creation import EventCreator
from homeserver.handlers.rooms import RoomHandler
from homeserver.storage.admin import AdminStore
from homeserver.storage.events import EventStore

_CREATE = ("m.room.create", "")
_POWER = ("m.room.power_levels", "")
_JOIN_RULES = ("m.room.join_rules", "")
# A creator grants this level (Synapse's choice), or the highest listed one if that is more.
_ADMIN_LEVEL = 100


def _no_admin(detail: str = "") -> MatrixError:
    return MatrixError(400, Codes.UNKNOWN, "No local admin user in room" + detail)


class AdminRoomTools:
    def __init__(
        self,
        admin: AdminHandler,
        store: AdminStore,
        rooms: RoomHandler,
        events: EventStore,
        creator: EventCreator,
        clock: Clock,
    ) -> None:
        self.admin = admin
        self.store = store
        self.rooms = rooms
        self.events = events
        self.creator = creator
        self.clock = clock

    async def room_id(self, room_id_or_alias: str) -> str:
        """The ID of a room this server knows: 404 for an unknown room or alias."""
        room_id, _ = await self.rooms.resolve_room(room_id_or_alias)
        if await self.events.get_room_version(room_id) is None:
            raise not_found("Room not found")
        return room_id

    # make_room_admin --------------------------------------------------------------------------

    async def make_room_admin(self, room_id: str, user_id: str) -> None:
        await self.admin.query_user(user_id)  # 400 for a remote user, 404 for an unknown one
        keys = [_CREATE, _POWER, _JOIN_RULES, ("m.room.member", user_id)]
        state = {k: v.event for k, v in (await self.events.get_current_state(room_id, keys)).items()}
        create = state.get(_CREATE)
        if create is None:
            raise MatrixError(400, Codes.UNKNOWN, "Server not in room")
        power = state.get(_POWER)
        if power is None:
            # No power levels yet: the creator has every right.
            acting = create.sender
            if not self.rooms.is_local_user(acting):
                raise _no_admin()
        else:
            acting = await self._acting_admin(room_id, state, create)
        content = self._granted(state, create, acting, user_id)
        if content is not None:
            try:
                await self.creator.create_and_send(
                    room_id=room_id, type=_POWER[0], sender=acting, content=content, state_key=""
                )
            except MatrixError as e:
                if e.errcode != Codes.FORBIDDEN:
                    raise
                raise _no_admin(" with power to update power levels") from None
        member = state.get(("m.room.member", user_id))
        if member is not None and member.membership in ("join", "invite"):
            return
        join_rules = state.get(_JOIN_RULES)
        if join_rules is not None and join_rules.content.get("join_rule") == "public":
            return  # they can join by themselves
        await self.rooms.invite(acting, room_id, user_id)

    async def _acting_admin(self, room_id: str, state: dict[tuple[str, str], Event], create: Event) -> str:
        """The joined local user with the most power: listed in the power levels or, with
        privileged creators, a creator (the create event's sender first)."""
        users = state[_POWER].content.get("users")
        listed: dict[str, Any] = users if isinstance(users, dict) else {}
        candidates = {u for u in listed if self.rooms.is_local_user(u)}
        if create.room_version.privileged_creators:
            candidates |= {u for u in room_creators(create) if self.rooms.is_local_user(u)}
        ranked = sorted(
            candidates,
            key=lambda u: (get_power_level(u, state, create), u == create.sender, u),
            reverse=True,
        )
        for user in ranked:
            membership = await self.events.get_membership(room_id, user)
            if membership is not None and membership[0] == "join":
                return user
        raise _no_admin()

    @staticmethod
    def _granted(
        state: dict[tuple[str, str], Event], create: Event, acting: str, user_id: str
    ) -> dict[str, Any] | None:
        """The power levels content giving `user_id` the acting admin's level, or None when
        nothing changes (a creator of a v12 room already outranks everyone)."""
        privileged = create.room_version.privileged_creators
        if privileged and user_id in room_creators(create):
            return None
        power = state.get(_POWER)
        content: dict[str, Any] = dict(power.content) if power is not None else {}
        users = content.get("users")
        users = dict(users) if isinstance(users, dict) else {}
        if power is None:
            level: int | float = _ADMIN_LEVEL
            if not privileged:
                users[acting] = _ADMIN_LEVEL  # else the first power levels would demote the creator
        else:
            level = get_power_level(acting, state, create)
        if level == float("inf"):
            listed = [v for v in users.values() if isinstance(v, int) and not isinstance(v, bool)]
            level = max([_ADMIN_LEVEL, *listed])
        if power is not None and users.get(user_id) == level:
            return None
        users[user_id] = int(level)
        content["users"] = users
        return content

    # Forward extremities ----------------------------------------------------------------------

    async def forward_extremities(self, room_id: str) -> dict[str, Any]:
        found = await self.store.forward_extremities(room_id)
        results = [asdict(x) for x in found]
        return {"count": len(results), "results": results}

    async def delete_forward_extremities(self, room_id: str) -> int:
        """All but the newest forward extremity go, as in Synapse. Under the room lock, so no
        event is being built on them meanwhile; the room's cached head is dropped, and with
        several workers the next one to take the lock reads the stored head (`room_head`)."""
        async with self.creator.room_lock(room_id):
            try:
                return await self.store.delete_extra_extremities(room_id)
            finally:
                self.events.invalidate_room(room_id)

    # fetch_event ------------------------------------------------------------------------------

    async def fetch_event(self, event_id: str) -> dict[str, Any]:
        """The stored PDU (redacted, if it was) with the client format's fields and
        `unsigned` over it, whether or not the admin is in its room."""
        stored = await self.events.get_event(event_id)
        if stored is None:
            raise not_found("Event not found")
        out = dict(stored.event.pdu)
        out.update(client_event(stored, self.clock.time_ms()))
        return out
