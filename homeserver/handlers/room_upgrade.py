"""Room upgrades (POST /rooms/{roomId}/upgrade): a new room that continues an old one.

Order matters so that a failure half way never strands the old room: the upgrader's
power is checked first, the new room is built completely (state copied, bans carried
over, aliases moved), and only then is the old room tombstoned and locked down.
Members of a non-public room are invited to the new one, since they could not
otherwise follow the tombstone.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import string
from typing import Any

from homeserver.errors import Codes, MatrixError, forbidden
from homeserver.events import KNOWN_ROOM_VERSIONS
from homeserver.events.room_versions import RoomVersion
from homeserver.handlers.event_creation import EventCreator
from homeserver.handlers.rooms import SUPPORTED_ROOM_VERSIONS, RoomHandler
from homeserver.storage.accounts import AccountStore
from homeserver.storage.aliases import AliasStore
from homeserver.storage.events import EventStore, StoredEvent

log = logging.getLogger(__name__)

# State carried over verbatim (besides power levels, aliases and bans, handled specially).
COPIED_STATE = (
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.pinned_events",
    "m.space.child",
    "m.space.parent",
)


def _power(pl: dict[str, Any], user_id: str, creators: set[str]) -> float:
    if user_id in creators:
        return float("inf")
    users: dict[str, Any] = pl["users"] if isinstance(pl.get("users"), dict) else {}
    value = users.get(user_id, pl.get("users_default", 0))
    return float(value) if isinstance(value, int) else 0.0


def _required(pl: dict[str, Any], event_type: str) -> float:
    events: dict[str, Any] = pl["events"] if isinstance(pl.get("events"), dict) else {}
    value = events.get(event_type, pl.get("state_default", 50))
    return float(value) if isinstance(value, int) else 50.0


class RoomUpgradeHandler:
    def __init__(
        self,
        events: EventStore,
        creator: EventCreator,
        rooms: RoomHandler,
        aliases: AliasStore,
        accounts: AccountStore,
        server_name: str,
    ) -> None:
        self.events = events
        self.creator = creator
        self.rooms = rooms
        self.aliases = aliases
        self.accounts = accounts
        self.server_name = server_name
        self._locks: dict[str, asyncio.Lock] = {}

    async def upgrade(self, user_id: str, room_id: str, new_version: Any) -> str:
        if not isinstance(new_version, str) or new_version not in SUPPORTED_ROOM_VERSIONS:
            raise MatrixError(400, Codes.UNSUPPORTED_ROOM_VERSION, "Unsupported room version")
        old_rv = await self.events.get_room_version(room_id)
        if old_rv is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        try:
            async with lock:
                return await self._upgrade(user_id, room_id, old_rv, KNOWN_ROOM_VERSIONS[new_version])
        finally:
            if not lock.locked():
                self._locks.pop(room_id, None)

    async def _upgrade(self, user_id: str, room_id: str, old_rv: RoomVersion, rv: RoomVersion) -> str:
        membership = await self.events.get_membership(room_id, user_id)
        if membership is None or membership[0] != "join":
            raise forbidden("You are not in this room")
        state = await self.events.get_current_state(room_id)
        create = state[("m.room.create", "")].event
        old_creators: set[str] = set()
        if old_rv.privileged_creators:
            old_creators.add(create.sender)
            extra = create.content.get("additional_creators")
            if isinstance(extra, list):
                old_creators.update(c for c in extra if isinstance(c, str))
        pl_event = state.get(("m.room.power_levels", ""))
        old_pl: dict[str, Any] = copy.deepcopy(pl_event.event.content) if pl_event else {}
        if _power(old_pl, user_id, old_creators) < _required(old_pl, "m.room.tombstone"):
            raise forbidden("You do not have the power to upgrade this room")
        existing_tombstone = state.get(("m.room.tombstone", ""))
        if existing_tombstone is not None and existing_tombstone.event.content.get("replacement_room"):
            raise MatrixError(400, Codes.BAD_STATE, "This room has already been upgraded")

        new_room_id = await self._create(user_id, room_id, rv, create.content)
        await self._send(new_room_id, user_id, "m.room.member", await self._member_content(user_id), user_id)
        await self._copy_power_levels(user_id, new_room_id, rv, old_pl, old_creators, state)
        bans = [k[1] for k, s in state.items() if k[0] == "m.room.member" and s.event.membership == "ban"]
        for banned in bans:
            await self._try_send(new_room_id, user_id, "m.room.member", {"membership": "ban"}, banned)
        await self._move_aliases(user_id, room_id, new_room_id, state)
        await self._send(
            room_id,
            user_id,
            "m.room.tombstone",
            {"body": "This room has been replaced", "replacement_room": new_room_id},
            "",
        )
        await self._lock_down(user_id, room_id, old_pl)
        await self._move_directory_listing(room_id, new_room_id)
        await self._invite_members(user_id, room_id, new_room_id, state)
        return new_room_id

    async def _send(
        self, room_id: str, sender: str, type: str, content: dict[str, Any], state_key: str | None
    ) -> None:
        await self.creator.create_and_send(
            room_id=room_id, type=type, sender=sender, content=content, state_key=state_key
        )

    async def _try_send(
        self, room_id: str, sender: str, type: str, content: dict[str, Any], state_key: str | None
    ) -> None:
        try:
            await self._send(room_id, sender, type, content, state_key)
        except MatrixError as e:
            log.info("room upgrade: could not send %s in %s: %s", type, room_id, e.message)

    async def _member_content(self, user_id: str) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": "join"}
        user = await self.accounts.get_user(user_id)
        if user:
            for key in ("displayname", "avatar_url"):
                if user.get(key):
                    content[key] = user[key]
        return content

    async def _create(
        self, user_id: str, old_room_id: str, rv: RoomVersion, old_create: dict[str, Any]
    ) -> str:
        prevs, _ = await self.events.get_extremities_and_depth(old_room_id)
        content: dict[str, Any] = {
            "room_version": rv.identifier,
            "predecessor": {"room_id": old_room_id, **({"event_id": prevs[0]} if prevs else {})},
        }
        for key in ("type", "m.federate"):
            if key in old_create:
                content[key] = old_create[key]
        if not rv.implicit_room_creator:
            content["creator"] = user_id
        room_id: str | None = None
        if not rv.room_id_is_create_event_hash:
            room_id = (
                "!"
                + "".join(secrets.choice(string.ascii_letters) for _ in range(18))
                + ":"
                + self.server_name
            )
        event, _ = await self.creator.create_room_event(
            room_version=rv, room_id=room_id, sender=user_id, content=content
        )
        return event.room_id

    async def _copy_power_levels(
        self,
        user_id: str,
        new_room_id: str,
        rv: RoomVersion,
        old_pl: dict[str, Any],
        old_creators: set[str],
        state: dict[tuple[str, str], StoredEvent],
    ) -> None:
        final = copy.deepcopy(old_pl)
        users: dict[str, Any] = final["users"] if isinstance(final.get("users"), dict) else {}
        final["users"] = users
        if rv.privileged_creators:
            # The upgrader is the new room's creator: creators must not appear in `users`.
            users.pop(user_id, None)
        elif user_id in old_creators:
            users[user_id] = 100
        if rv.privileged_creators:
            await self._send(new_room_id, user_id, "m.room.power_levels", final, "")
            await self._copy_state(user_id, new_room_id, state)
            return
        # Temporarily give the upgrader enough power to copy every piece of state.
        temporary = copy.deepcopy(final)
        needed = [100]
        for key in ("state_default", "events_default", "ban", "kick", "redact", "invite"):
            if isinstance(temporary.get(key), int):
                needed.append(temporary[key])
        events = temporary.get("events")
        if isinstance(events, dict):
            needed.extend(v for v in events.values() if isinstance(v, int))
        temporary["users"] = {**users, user_id: max(needed)}
        await self._send(new_room_id, user_id, "m.room.power_levels", temporary, "")
        await self._copy_state(user_id, new_room_id, state)
        if temporary != final:
            await self._send(new_room_id, user_id, "m.room.power_levels", final, "")

    async def _copy_state(
        self, user_id: str, new_room_id: str, state: dict[tuple[str, str], StoredEvent]
    ) -> None:
        for (type_, key), stored in state.items():
            if type_ in COPIED_STATE and stored.event.content:
                await self._try_send(new_room_id, user_id, type_, dict(stored.event.content), key)

    async def _move_aliases(
        self, user_id: str, room_id: str, new_room_id: str, state: dict[tuple[str, str], StoredEvent]
    ) -> None:
        for alias in await self.aliases.for_room(room_id):
            found = await self.aliases.get(alias, ask=False)
            creator = found[1] if found else user_id
            await self.aliases.delete(alias)
            await self.aliases.create(alias, new_room_id, creator)
        canonical = state.get(("m.room.canonical_alias", ""))
        if canonical is not None and canonical.event.content:
            await self._try_send(
                new_room_id, user_id, "m.room.canonical_alias", dict(canonical.event.content), ""
            )
            await self._try_send(room_id, user_id, "m.room.canonical_alias", {}, "")

    async def _lock_down(self, user_id: str, room_id: str, old_pl: dict[str, Any]) -> None:
        """Stop ordinary members from talking or inviting in the old room."""
        pl = copy.deepcopy(old_pl)
        default = pl.get("users_default", 0)
        restricted = max(50, (default if isinstance(default, int) else 0) + 1)
        changed = False
        for key in ("events_default", "invite"):
            current = pl.get(key, 0)
            if not isinstance(current, int) or current < restricted:
                pl[key] = restricted
                changed = True
        if changed:
            await self._try_send(room_id, user_id, "m.room.power_levels", pl, "")

    async def _move_directory_listing(self, room_id: str, new_room_id: str) -> None:
        if await self.events.is_room_public(room_id):
            await self.events.set_room_public(new_room_id, True)
            await self.events.set_room_public(room_id, False)

    async def _invite_members(
        self, user_id: str, room_id: str, new_room_id: str, state: dict[tuple[str, str], StoredEvent]
    ) -> None:
        join_rules = state.get(("m.room.join_rules", ""))
        if join_rules is not None and join_rules.event.content.get("join_rule") == "public":
            return
        members = [k[1] for k, s in state.items() if k[0] == "m.room.member" and s.event.membership == "join"]
        for member in members:
            if member == user_id:
                continue
            try:
                await self.rooms.invite(user_id, new_room_id, member)
            except MatrixError as e:
                log.info("room upgrade: could not invite a member to %s: %s", new_room_id, e.message)
