"""Queries for the admin API: listing users and rooms, room summaries, and purging a room.

Read queries are paged by offset (as Synapse's admin API is). `purge_room` removes every
row that belongs to a room from every table that has a `room_id` column (and rows keyed
only by the room's event IDs), in one transaction; tables added later by other areas are
covered without changes here. Users' key backups (`e2e_room_keys`) are theirs and kept.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.schema import federation_event_state
from homeserver import jsonutil
from homeserver.storage import all_schemas  # noqa: F401  (every table is on `metadata` for purge_room)
from homeserver.storage.cs_schema import event_push_actions
from homeserver.storage.engine import Database
from homeserver.storage.push import record_counts_changed
from homeserver.storage.schema import (
    current_state,
    devices,
    events,
    forward_extremities,
    metadata,
    receipts,
    rooms,
    users,
)

# Tables whose room_id rows survive a purge: they belong to users, not to the room.
# Key backups are the user's; a block outlives the room it names.
KEEP_ON_PURGE = frozenset({"e2e_room_keys", "blocked_rooms"})
# Rows naming a purged event that a history purge keeps: moderators' reports; receipts and
# room state never name one (see `_history_batch`); events go last.
KEEP_ON_HISTORY_PURGE = frozenset({"reports", "receipts", "current_state", "forward_extremities", "events"})
# Events deleted per transaction by a history purge.
PURGE_BATCH = 500

# The room state a summary shows (all with state key "").
SUMMARY_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.join_rules",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.encryption",
)


@dataclass(slots=True)
class UserRow:
    user_id: str
    is_admin: bool
    is_guest: bool
    deactivated: bool
    created_ts: int
    displayname: str | None
    avatar_url: str | None
    has_password: bool
    last_seen_ts: int | None = None
    locked: bool = False
    shadow_banned: bool = False
    # The terms the user accepted at registration, and when (null if never asked).
    consent_version: str | None = None
    consent_ts: int | None = None


@dataclass(slots=True)
class Extremity:
    event_id: str
    state_group: int | None
    depth: int
    # Synapse's received_ts; Sotto keeps no arrival time, so the event's origin_server_ts.
    received_ts: int


@dataclass(slots=True)
class RoomSummary:
    room_id: str
    version: str
    creator: str | None
    public: bool
    created_ts: int
    state: dict[str, dict[str, Any]] = field(default_factory=dict)  # type -> content
    joined_members: int = 0
    joined_local_members: int = 0
    state_events: int = 0


def _user(row: Any, last_seen: int | None = None) -> UserRow:
    return UserRow(
        user_id=row.user_id,
        is_admin=bool(row.is_admin),
        is_guest=bool(row.is_guest),
        deactivated=bool(row.deactivated),
        created_ts=int(row.created_ts),
        displayname=row.displayname,
        avatar_url=row.avatar_url,
        has_password=row.password_hash is not None,
        last_seen_ts=last_seen,
        locked=bool(row.locked),
        shadow_banned=bool(row.shadow_banned),
        consent_version=row.consent_version,
        consent_ts=row.consent_ts,
    )


class AdminStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name

    # Users ---------------------------------------------------------------------------------

    async def list_users(
        self,
        *,
        offset: int,
        limit: int,
        name: str | None,
        user_id: str | None,
        guests: bool,
        deactivated: bool,
        admins: bool | None,
        order_by: str,
        backwards: bool,
    ) -> tuple[list[UserRow], int]:
        """A page of users and the total number matching the filters."""
        conds: list[Any] = []
        if name:
            conds.append(
                or_(
                    users.c.user_id.contains(name, autoescape=True),
                    users.c.displayname.contains(name, autoescape=True),
                )
            )
        if user_id:
            conds.append(users.c.user_id.contains(user_id, autoescape=True))
        if not guests:
            conds.append(users.c.is_guest.is_(False))
        if not deactivated:
            conds.append(users.c.deactivated.is_(False))
        if admins is not None:
            conds.append(users.c.is_admin.is_(admins))
        columns = {
            "name": users.c.user_id,
            "displayname": users.c.displayname,
            "creation_ts": users.c.created_ts,
            "admin": users.c.is_admin,
            "deactivated": users.c.deactivated,
            "is_guest": users.c.is_guest,
        }
        column = columns.get(order_by, users.c.user_id)
        order = [column.desc() if backwards else column.asc(), users.c.user_id.asc()]
        async with self.db.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(users).where(*conds))).scalar_one()
            rows = (
                await conn.execute(select(users).where(*conds).order_by(*order).offset(offset).limit(limit))
            ).all()
            seen = await self._last_seen(conn, [r.user_id for r in rows])
        return [_user(r, seen.get(r.user_id)) for r in rows], int(total)

    async def get_user(self, user_id: str) -> UserRow | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.user_id == user_id))).first()
            if row is None:
                return None
            seen = await self._last_seen(conn, [user_id])
        return _user(row, seen.get(user_id))

    @staticmethod
    async def _last_seen(conn: AsyncConnection, user_ids: list[str]) -> dict[str, int]:
        if not user_ids:
            return {}
        q = (
            select(devices.c.user_id, func.max(devices.c.last_seen_ts))
            .where(devices.c.user_id.in_(user_ids))
            .group_by(devices.c.user_id)
        )
        return {r[0]: int(r[1]) for r in await conn.execute(q) if r[1] is not None}

    # Rooms ---------------------------------------------------------------------------------

    async def room_ids(self) -> list[str]:
        async with self.db.read() as conn:
            return [r[0] for r in await conn.execute(select(rooms.c.room_id).order_by(rooms.c.room_id))]

    async def room_summaries(self, room_ids: Collection[str] | None = None) -> list[RoomSummary]:
        """Summaries of the given rooms (all rooms when None), in four queries."""
        where_rooms: list[Any] = [] if room_ids is None else [rooms.c.room_id.in_(list(room_ids))]
        where_state: list[Any] = [] if room_ids is None else [current_state.c.room_id.in_(list(room_ids))]
        async with self.db.read() as conn:
            out = {
                r.room_id: RoomSummary(
                    r.room_id, r.room_version, r.creator, bool(r.is_public), int(r.created_ts)
                )
                for r in await conn.execute(select(rooms).where(*where_rooms))
            }
            state_rows = await conn.execute(
                select(current_state.c.room_id, current_state.c.type, events.c.json)
                .select_from(current_state.join(events, events.c.event_id == current_state.c.event_id))
                .where(*where_state, current_state.c.type.in_(SUMMARY_TYPES), current_state.c.state_key == "")
            )
            for room_id, type_, raw in state_rows:
                if room_id in out:
                    content = jsonutil.loads(raw).get("content")
                    out[room_id].state[type_] = content if isinstance(content, dict) else {}
            members = await conn.execute(
                select(current_state.c.room_id, current_state.c.state_key).where(
                    *where_state,
                    current_state.c.type == "m.room.member",
                    current_state.c.membership == "join",
                )
            )
            suffix = ":" + self.server_name
            for room_id, user_id in members:
                if room_id in out:
                    out[room_id].joined_members += 1
                    out[room_id].joined_local_members += user_id.endswith(suffix)
            counts = await conn.execute(
                select(current_state.c.room_id, func.count())
                .where(*where_state)
                .group_by(current_state.c.room_id)
            )
            for room_id, count in counts:
                if room_id in out:
                    out[room_id].state_events = int(count)
        return list(out.values())

    async def count_local_devices(self, user_ids: Collection[str]) -> int:
        if not user_ids:
            return 0
        async with self.db.read() as conn:
            q = select(func.count()).select_from(devices).where(devices.c.user_id.in_(list(user_ids)))
            return int((await conn.execute(q)).scalar_one())

    # Forward extremities ---------------------------------------------------------------------

    async def forward_extremities(self, room_id: str) -> list[Extremity]:
        """The room's forward extremities, oldest first. `state_group` is the federation state
        group after the event (bridge/), None where this server has not worked one out."""
        fx = forward_extremities.c
        fes = federation_event_state.c
        q = (
            select(fx.event_id, fes.state_group, events.c.depth, events.c.origin_server_ts)
            .select_from(
                forward_extremities.join(events, events.c.event_id == fx.event_id).outerjoin(
                    federation_event_state, fes.event_id == fx.event_id
                )
            )
            .where(fx.room_id == room_id)
            .order_by(events.c.stream_id)
        )
        async with self.db.read() as conn:
            rows = list(await conn.execute(q))
        return [Extremity(str(r[0]), None if r[1] is None else int(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def delete_extra_extremities(self, room_id: str) -> int:
        """Synapse's trim: every forward extremity of the room but the newest (by stream
        order) stops being one; the events stay. Returns how many went. The caller holds the
        room lock and drops the room's cached head (`EventStore.invalidate_room`)."""
        fx = forward_extremities.c
        newest = (
            select(fx.event_id)
            .select_from(forward_extremities.join(events, events.c.event_id == fx.event_id))
            .where(fx.room_id == room_id)
            .order_by(events.c.stream_id.desc())
            .limit(1)
        )
        async with self.db.write() as conn:
            keep = (await conn.execute(newest)).scalar_one_or_none()
            if keep is None:
                return 0
            result = await conn.execute(
                delete(forward_extremities).where(fx.room_id == room_id, fx.event_id != keep)
            )
        return int(result.rowcount)

    # Purge ---------------------------------------------------------------------------------

    async def purge_room(self, room_id: str) -> dict[str, int]:
        """Delete everything stored for `room_id`; returns rows deleted per table."""
        room_events = select(events.c.event_id).where(events.c.room_id == room_id).scalar_subquery()
        by_room: list[Table] = []
        by_event: list[Table] = []
        for table in metadata.sorted_tables:
            if table.name in KEEP_ON_PURGE:
                continue
            if "room_id" in table.c:
                by_room.append(table)
            elif "event_id" in table.c:
                by_event.append(table)
        deleted: dict[str, int] = {}
        async with self.db.write() as conn:
            # Rows keyed by event ID first: they are found through the room's events.
            for table in by_event:
                result = await conn.execute(delete(table).where(table.c.event_id.in_(room_events)))
                deleted[table.name] = result.rowcount
            # Children before parents, in case a table has a foreign key to another.
            for table in reversed(by_room):
                result = await conn.execute(delete(table).where(table.c.room_id == room_id))
                deleted[table.name] = result.rowcount
        return {k: v for k, v in deleted.items() if v}

    # History purge ---------------------------------------------------------------------------

    def _history_batch(self, room_id: str, before_stream: int, local_too: bool) -> Any:
        """The next events of the room a history purge deletes: messages (no state key) of
        the timeline before `before_stream`, except forward extremities (new events are built
        on them), events a read receipt points at (the read position is found through them)
        and, unless `local_too`, those of local senders."""
        e = events.c
        fx = forward_extremities.c
        q = (
            select(e.event_id)
            .where(
                e.room_id == room_id,
                e.stream_id < before_stream,
                e.state_key.is_(None),
                e.outlier.is_(False),
                e.event_id.not_in(select(fx.event_id).where(fx.room_id == room_id)),
                e.event_id.not_in(select(receipts.c.event_id).where(receipts.c.room_id == room_id)),
            )
            .order_by(e.stream_id)
            .limit(PURGE_BATCH)
        )
        if not local_too:
            q = q.where(~e.sender.endswith(":" + self.server_name, autoescape=True))
        return q

    async def retention_policies(self) -> dict[str, Any]:
        """Room ID -> the content of its current `m.room.retention` state event."""
        cs = current_state.c
        q = (
            select(cs.room_id, events.c.json)
            .select_from(current_state.join(events, events.c.event_id == cs.event_id))
            .where(cs.type == "m.room.retention", cs.state_key == "")
        )
        async with self.db.read() as conn:
            rows = list(await conn.execute(q))
        return {str(room_id): jsonutil.loads(raw).get("content") for room_id, raw in rows}

    async def first_stream_at(self, room_id: str, ts: int) -> int | None:
        """The stream position of the room's first timeline event sent at or after `ts`."""
        e = events.c
        q = select(func.min(e.stream_id)).where(
            e.room_id == room_id, e.origin_server_ts >= ts, e.outlier.is_(False)
        )
        async with self.db.read() as conn:
            found = (await conn.execute(q)).scalar_one_or_none()
        return int(found) if found is not None else None

    async def purge_history_batch(self, room_id: str, before_stream: int, local_too: bool) -> int:
        """Delete the next batch of the room's history (see `_history_batch`) and every row
        about those events (but reports: they are the moderators' record), in one write
        transaction, so no receipt can come to point at one meanwhile. Users whose
        notifications went get their unread counts made afresh. Returns how many went."""
        async with self.db.write() as conn:
            batch = [
                str(r[0]) for r in await conn.execute(self._history_batch(room_id, before_stream, local_too))
            ]
            if not batch:
                return 0
            epa = event_push_actions.c
            users = await conn.execute(
                select(epa.user_id).distinct().where(epa.room_id == room_id, epa.event_id.in_(batch))
            )
            notified = [str(r[0]) for r in users]
            for table in metadata.sorted_tables:
                if "event_id" in table.c and table.name not in KEEP_ON_HISTORY_PURGE:
                    await conn.execute(delete(table).where(table.c.event_id.in_(batch)))
            await conn.execute(delete(events).where(events.c.event_id.in_(batch)))
            await record_counts_changed(self.db, conn, room_id, notified)
        return len(batch)
