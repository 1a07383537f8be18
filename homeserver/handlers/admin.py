"""Server administration: the logic behind the Synapse-compatible admin API and `sotto admin`.

Every method takes an already-authorised admin (the route checks `Requester.is_admin`).
Output follows Synapse's admin API field names, so existing tools (synapse-admin,
scripts) work against Sotto.

Invariants:
* Only local users are managed; remote IDs are 400 `M_INVALID_PARAM`, unknown ones 404.
* Deleting a room first makes every local member leave (their own leave event, so the
  auth rules allow it and remote servers see an ordinary leave), removes its aliases and
  directory entry, and only then purges the stored room. Room deletions also run in the
  background (v2) with a bounded, in-memory status table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, bad_json, invalid_param, not_found
from homeserver.handlers.admin_jobs import JobTable, new_job_id
from homeserver.handlers.auth import AuthHandler, PasswordHasher
from homeserver.handlers.deactivation import Deactivator, leave_rooms
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.event_creation import EventCreator
from homeserver.handlers.registration import validate_password
from homeserver.storage.accounts import AccountStore
from homeserver.storage.admin import AdminStore, RoomSummary, UserRow
from homeserver.storage.aliases import AliasStore
from homeserver.storage.events import EventStore
from homeserver.storage.external_ids import ExternalIdStore
from homeserver.storage.threepids import ThreepidStore

log = logging.getLogger(__name__)

MAX_PAGE = 1000
MAX_DELETE_STATUSES = 1000

ROOM_ORDER_KEYS = frozenset(
    {
        "name",
        "canonical_alias",
        "joined_members",
        "joined_local_members",
        "version",
        "creator",
        "encryption",
        "federatable",
        "public",
        "join_rules",
        "guest_access",
        "history_visibility",
        "state_events",
    }
)


def server_version() -> str:
    try:
        return importlib_metadata.version("sotto")
    except importlib_metadata.PackageNotFoundError:
        return "0.1.0"


def user_json(user: UserRow, erased: bool = False) -> dict[str, Any]:
    """`erased`: deactivated with `erase` (homeserver/storage/erased_users.py)."""
    return {
        "name": user.user_id,
        "displayname": user.displayname,
        "avatar_url": user.avatar_url,
        "admin": user.is_admin,
        "is_guest": user.is_guest,
        "deactivated": user.deactivated,
        "erased": erased,
        "shadow_banned": user.shadow_banned,
        "locked": user.locked,
        "approved": True,
        "user_type": None,
        "creation_ts": user.created_ts,
        "last_seen_ts": user.last_seen_ts,
    }


def _str_field(content: Mapping[str, Any], key: str) -> str | None:
    value = content.get(key)
    return value if isinstance(value, str) else None


def room_json(room: RoomSummary) -> dict[str, Any]:
    state = room.state
    create = state.get("m.room.create", {})
    return {
        "room_id": room.room_id,
        "name": _str_field(state.get("m.room.name", {}), "name"),
        "topic": _str_field(state.get("m.room.topic", {}), "topic"),
        "avatar": _str_field(state.get("m.room.avatar", {}), "url"),
        "canonical_alias": _str_field(state.get("m.room.canonical_alias", {}), "alias"),
        "joined_members": room.joined_members,
        "joined_local_members": room.joined_local_members,
        "version": room.version,
        "creator": room.creator,
        "encryption": _str_field(state.get("m.room.encryption", {}), "algorithm"),
        "federatable": create.get("m.federate", True) is not False,
        "public": room.public,
        "join_rules": _str_field(state.get("m.room.join_rules", {}), "join_rule"),
        "guest_access": _str_field(state.get("m.room.guest_access", {}), "guest_access"),
        "history_visibility": _str_field(state.get("m.room.history_visibility", {}), "history_visibility"),
        "state_events": room.state_events,
        "room_type": _str_field(create, "type"),
    }


def _sort_key(order_by: str) -> Any:
    def key(room: dict[str, Any]) -> tuple[bool, Any, str]:
        value = room.get(order_by)
        # Rooms without a value sort last, as in Synapse; ties are broken by room ID.
        return (value is None, value if value is not None else 0, room["room_id"])

    return key


@dataclass(slots=True)
class DeleteStatus:
    delete_id: str
    room_id: str
    status: str = "scheduled"
    error: str | None = None
    shutdown_room: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"delete_id": self.delete_id, "status": self.status}
        if self.error:
            out["error"] = self.error
        out["shutdown_room"] = self.shutdown_room
        return out


@dataclass(slots=True)
class PurgeStatus:
    purge_id: str
    status: str = "active"
    error: str | None = None
    deleted: int = 0


class AdminHandler:
    def __init__(
        self,
        store: AdminStore,
        accounts: AccountStore,
        events: EventStore,
        aliases: AliasStore,
        creator: EventCreator,
        auth: AuthHandler,
        passwords: PasswordHasher,
        devices: DeviceHandler,
        clock: Clock,
        server_name: str,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.events = events
        self.aliases = aliases
        self.creator = creator
        self.auth = auth
        self.passwords = passwords
        self.devices = devices
        self.clock = clock
        self.server_name = server_name
        self.external_ids = ExternalIdStore(store.db)
        self.threepids = ThreepidStore(store.db)
        self.deactivator = Deactivator(accounts, devices, auth, events, creator)
        self._deletes: JobTable[DeleteStatus] = JobTable(MAX_DELETE_STATUSES, "Delete ID not found")
        self._purges: JobTable[PurgeStatus] = JobTable(
            MAX_DELETE_STATUSES, "No such purge (or this worker did not run it)"
        )

    # Users ---------------------------------------------------------------------------------

    def _require_local(self, user_id: str) -> None:
        if not user_id.endswith(":" + self.server_name):
            raise invalid_param("Can only manage local users")

    async def _require_user(self, user_id: str) -> UserRow:
        self._require_local(user_id)
        user = await self.store.get_user(user_id)
        if user is None:
            raise not_found("User not found")
        return user

    async def list_users(
        self,
        *,
        offset: int,
        limit: int,
        name: str | None = None,
        user_id: str | None = None,
        guests: bool = True,
        deactivated: bool = False,
        admins: bool | None = None,
        order_by: str = "name",
        backwards: bool = False,
    ) -> dict[str, Any]:
        limit = min(limit, MAX_PAGE)
        rows, total = await self.store.list_users(
            offset=offset,
            limit=limit,
            name=name,
            user_id=user_id,
            guests=guests,
            deactivated=deactivated,
            admins=admins,
            order_by=order_by,
            backwards=backwards,
        )
        erased = await self.accounts.erased.among([u.user_id for u in rows])
        out: dict[str, Any] = {"users": [user_json(u, u.user_id in erased) for u in rows], "total": total}
        if offset + len(rows) < total:
            out["next_token"] = str(offset + len(rows))
        return out

    async def query_user(self, user_id: str) -> dict[str, Any]:
        user = await self._require_user(user_id)
        out = user_json(user, await self.accounts.erased.is_erased(user_id))
        links = await self.external_ids.of_user(user_id)
        external_ids = [{"auth_provider": p, "external_id": e} for p, e in links]
        threepids = [t.to_json() for t in await self.threepids.of_user(user_id)]
        out.update(threepids=threepids, external_ids=external_ids, appservice_id=None)
        out.update(consent_version=user.consent_version, consent_ts=user.consent_ts)
        out["devices"] = len(await self.accounts.list_devices(user_id))
        return out

    async def deactivate(self, user_id: str, *, erase: bool = False) -> dict[str, Any]:
        """Log the user out everywhere, lock the account and remove them from their rooms."""
        await self._require_user(user_id)
        await self.deactivator.deactivate(user_id, erase=erase)
        log.info("admin deactivated %s", user_id)
        return {"id_server_unbind_result": "no-support"}

    async def reset_password(self, user_id: str, new_password: str, *, logout_devices: bool = True) -> None:
        user = await self._require_user(user_id)
        if user.deactivated:
            raise MatrixError(400, Codes.USER_DEACTIVATED, "The account is deactivated")
        validate_password(new_password)
        await self.accounts.set_password_hash(user_id, await self.passwords.hash(new_password))
        if logout_devices:
            await self.devices.delete_devices(user_id, None)
            self.auth.invalidate_user(user_id)
        log.info("admin reset the password of %s", user_id)

    # Rooms ---------------------------------------------------------------------------------

    async def list_rooms(
        self,
        *,
        offset: int,
        limit: int,
        order_by: str = "name",
        backwards: bool = False,
        search_term: str | None = None,
    ) -> dict[str, Any]:
        if order_by not in ROOM_ORDER_KEYS:
            raise invalid_param(f"Unknown value for order_by: {order_by}")
        limit = min(limit, MAX_PAGE)
        rooms = [room_json(r) for r in await self.store.room_summaries()]
        if search_term:
            needle = search_term.lower()
            rooms = [
                r
                for r in rooms
                if any(needle in (r.get(k) or "").lower() for k in ("name", "canonical_alias", "room_id"))
            ]
        rooms.sort(key=_sort_key(order_by), reverse=backwards)
        page = rooms[offset : offset + limit]
        out: dict[str, Any] = {"rooms": page, "offset": offset, "total_rooms": len(rooms)}
        if offset + len(page) < len(rooms):
            out["next_batch"] = offset + len(page)
        if offset > 0:
            out["prev_batch"] = max(0, offset - limit)
        return out

    async def room_details(self, room_id: str) -> dict[str, Any]:
        found = await self.store.room_summaries([room_id])
        if not found:
            raise not_found("Room not found")
        out = room_json(found[0])
        local = [
            u
            for u in await self.events.get_room_members(room_id, "join")
            if u.endswith(":" + self.server_name)
        ]
        out["joined_local_devices"] = await self.store.count_local_devices(local)
        out["forgotten"] = False
        return out

    async def room_members(self, room_id: str) -> dict[str, Any]:
        if await self.events.get_room_version(room_id) is None:
            raise not_found("Room not found")
        members = sorted(await self.events.get_room_members(room_id, "join"))
        return {"members": members, "total": len(members)}

    async def room_state(self, room_id: str) -> dict[str, Any]:
        if await self.events.get_room_version(room_id) is None:
            raise not_found("Room not found")
        state = await self.events.get_current_state(room_id)
        return {"state": [s.event.pdu for s in state.values()]}

    @staticmethod
    def parse_delete(body: Mapping[str, Any]) -> tuple[bool, bool]:
        """Validate a room-deletion body; returns (`purge`, `block`)."""
        for key in ("block", "force_purge", "purge"):
            if key in body and not isinstance(body[key], bool):
                raise bad_json(f"{key} must be a boolean")
        if body.get("new_room_user_id") is not None:
            raise invalid_param("Moving users to a new room is not supported")
        return bool(body.get("purge", True)), bool(body.get("block", False))

    async def block_room(self, room_id: str, by: str | None) -> None:
        """Block (`by`: the admin) or unblock a room, known here or not."""
        if not room_id.startswith("!") or len(room_id) < 2:
            raise invalid_param("Not a room ID")
        await self.events.set_room_blocked(room_id, by)
        log.info("room %s %s by %s", room_id, "blocked" if by else "unblocked", by or "an admin")

    async def delete_room(self, room_id: str, *, purge: bool = True) -> dict[str, Any]:
        """Remove every local user from the room, drop its aliases and directory entry, and
        (by default) purge it from the database."""
        if await self.events.get_room_version(room_id) is None:
            raise not_found("Room not found")
        kicked: list[str] = []
        failed: list[str] = []
        for membership in ("join", "invite", "knock"):
            for user_id in await self.events.get_room_members(room_id, membership):
                if not user_id.endswith(":" + self.server_name):
                    continue
                if await leave_rooms(self.events, self.creator, user_id, only_room=room_id):
                    kicked.append(user_id)
                else:
                    failed.append(user_id)
        aliases = await self.aliases.for_room(room_id)
        for alias in aliases:
            await self.aliases.delete(alias)
        await self.events.set_room_public(room_id, False)
        if purge:
            deleted = await self.store.purge_room(room_id)
            # The room no longer exists: forget its cached version and state too.
            self.events.drop_room_caches(room_id)
            log.info("admin purged room %s (%d rows)", room_id, sum(deleted.values()))
        return {
            "kicked_users": kicked,
            "failed_to_kick_users": failed,
            "local_aliases": aliases,
            "new_room_id": None,
        }

    # History purge -----------------------------------------------------------------------

    async def purge_cut(self, room_id: str, event_id: str | None, ts: Any) -> int:
        """The stream position a history purge stops before: the event's, or the first
        event's at or after `ts` (everything, when nothing is that recent)."""
        if await self.events.get_room_version(room_id) is None:
            raise not_found("Room not found")
        if event_id is not None:
            stored = await self.events.get_event(event_id)
            if stored is None or stored.event.room_id != room_id:
                raise not_found("Event not found in this room")
            return stored.stream_id
        if ts is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Give purge_up_to_event_id or purge_up_to_ts")
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise bad_json("purge_up_to_ts must be an integer")
        found = await self.store.first_stream_at(room_id, ts)
        return found if found is not None else self.store.db.current_stream_id + 1

    def start_purge_history(self, room_id: str, before_stream: int, local_too: bool) -> str:
        """Purge a room's history before a stream position in the background; returns the
        purge ID for `purge_status`."""
        status = PurgeStatus(new_job_id())

        async def run() -> None:
            try:
                while deleted := await self.store.purge_history_batch(room_id, before_stream, local_too):
                    status.deleted += deleted
                self.events.drop_room_caches(room_id)
                status.status = "complete"
                log.info("admin purged %d events of %s's history", status.deleted, room_id)
            except Exception as e:
                log.exception("purging the history of %s failed", room_id)
                # The type only: a database error's message carries its statement's values.
                status.status, status.error = "failed", type(e).__name__

        self._purges.start(status.purge_id, status, run())
        return status.purge_id

    def purge_status(self, purge_id: str) -> dict[str, Any]:
        status = self._purges.get(purge_id)
        out: dict[str, Any] = {"status": status.status}
        if status.error:
            out["error"] = status.error
        return out

    def start_delete(self, room_id: str, *, purge: bool = True) -> str:
        """Run `delete_room` in the background (admin API v2); returns the delete ID."""
        status = DeleteStatus(new_job_id(), room_id)

        async def run() -> None:
            status.status = "purging" if purge else "shutting_down"
            try:
                status.shutdown_room = await self.delete_room(room_id, purge=purge)
                status.status = "complete"
            except MatrixError as e:
                status.status, status.error = "failed", e.message
            except Exception as e:
                log.exception("deleting room %s failed", room_id)
                status.status, status.error = "failed", type(e).__name__

        self._deletes.start(status.delete_id, status, run())
        return status.delete_id

    def delete_status(self, delete_id: str) -> dict[str, Any]:
        return self._deletes.get(delete_id).to_json()

    def delete_statuses(self, room_id: str) -> dict[str, Any]:
        results = [s.to_json() for s in self._deletes.statuses() if s.room_id == room_id]
        if not results:
            raise not_found("No delete task for this room")
        return {"results": results}

    async def wait_for_deletes(self) -> None:
        """Let background deletions and purges finish (shutdown and tests)."""
        await self._deletes.wait()
        await self._purges.wait()
