"""Device list change tracking: which users' devices or cross-signing keys changed when,
and who shares rooms with whom (read from room membership in current state / events).

`device_list_changes` keeps a single row per user holding the stream position of the
user's latest change, so the table is bounded by the number of users. A window
(since, upto] contains the user iff their latest change falls in it, or an earlier
change did and a later one is still to come (that one will be in a later window).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver import jsonutil
from homeserver.storage.e2ee_schema import device_list_changes
from homeserver.storage.engine import Database
from homeserver.storage.schema import current_state, events
from homeserver.storage.sqlutil import chunks, upsert


async def mark_changed(conn: AsyncConnection, db: Database, user_ids: Iterable[str]) -> int:
    """Record a device list change for each user, inside an open write transaction."""
    stream_id = 0
    for user_id in sorted(set(user_ids)):
        stream_id = await db.next_stream_id()
        await conn.execute(
            upsert(
                conn,
                device_list_changes,
                {"user_id": user_id, "stream_id": stream_id},
                ["user_id"],
                ["stream_id"],
            )
        )
    return stream_id


@dataclass(slots=True, frozen=True)
class MembershipChange:
    room_id: str
    user_id: str
    membership: str
    stream_id: int


class DeviceListStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def mark_changed(self, user_ids: Iterable[str]) -> int:
        async with self.db.write() as conn:
            return await mark_changed(conn, self.db, user_ids)

    async def changed_between(self, since: int, upto: int) -> set[str]:
        """Users whose latest device list change is in (since, upto]."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(device_list_changes.c.user_id).where(
                    device_list_changes.c.stream_id > since, device_list_changes.c.stream_id <= upto
                )
            )
            return {r[0] for r in rows}

    async def membership_changes(
        self, room_ids: Collection[str], since: int, upto: int
    ) -> list[MembershipChange]:
        """m.room.member events in the rooms within (since, upto], in stream order."""
        out: list[MembershipChange] = []
        async with self.db.read() as conn:
            for part in chunks(room_ids):
                rows = await conn.execute(
                    select(events.c.room_id, events.c.state_key, events.c.json, events.c.stream_id)
                    .where(
                        events.c.room_id.in_(part),
                        events.c.stream_id > since,
                        events.c.stream_id <= upto,
                        events.c.type == "m.room.member",
                        events.c.outlier.is_(False),
                    )
                    .order_by(events.c.stream_id)
                )
                for room_id, state_key, raw, stream_id in rows:
                    content = jsonutil.loads(raw).get("content", {})
                    membership = content.get("membership") if isinstance(content, dict) else None
                    if isinstance(state_key, str) and isinstance(membership, str):
                        out.append(MembershipChange(room_id, state_key, membership, int(stream_id)))
        out.sort(key=lambda c: c.stream_id)
        return out

    async def joined_members(self, room_ids: Collection[str]) -> set[str]:
        users: set[str] = set()
        async with self.db.read() as conn:
            for part in chunks(room_ids):
                rows = await conn.execute(
                    select(current_state.c.state_key)
                    .distinct()
                    .where(
                        current_state.c.room_id.in_(part),
                        current_state.c.type == "m.room.member",
                        current_state.c.membership == "join",
                    )
                )
                users.update(r[0] for r in rows)
        return users

    async def users_sharing(self, room_ids: Collection[str], candidates: Collection[str]) -> set[str]:
        """Those of `candidates` joined to at least one of `room_ids`."""
        if not room_ids or not candidates:
            return set()
        found: set[str] = set()
        async with self.db.read() as conn:
            for users_part in chunks(candidates):
                for rooms_part in chunks(room_ids):
                    rows = await conn.execute(
                        select(current_state.c.state_key)
                        .distinct()
                        .where(
                            current_state.c.state_key.in_(users_part),
                            current_state.c.type == "m.room.member",
                            current_state.c.membership == "join",
                            current_state.c.room_id.in_(rooms_part),
                        )
                    )
                    found.update(r[0] for r in rows)
        return found

    async def joined_rooms_of(self, user_ids: Collection[str]) -> dict[str, set[str]]:
        """The rooms each of `user_ids` is joined to (users joined to none are left out)."""
        rooms: dict[str, set[str]] = {}
        async with self.db.read() as conn:
            for part in chunks(user_ids):
                rows = await conn.execute(
                    select(current_state.c.state_key, current_state.c.room_id).where(
                        current_state.c.state_key.in_(part),
                        current_state.c.type == "m.room.member",
                        current_state.c.membership == "join",
                    )
                )
                for user_id, room_id in rows:
                    rooms.setdefault(user_id, set()).add(room_id)
        return rooms

    async def own_membership_changes(self, user_id: str, since: int, upto: int) -> list[tuple[str, str]]:
        """(room_id, membership) for rooms where the user's current membership was set in (since, upto]."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(current_state.c.room_id, current_state.c.membership).where(
                    current_state.c.state_key == user_id,
                    current_state.c.type == "m.room.member",
                    current_state.c.stream_id > since,
                    current_state.c.stream_id <= upto,
                )
            )
            return [(r[0], r[1] or "") for r in rows]

    async def joined_rooms(self, user_id: str) -> list[str]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(current_state.c.room_id).where(
                    current_state.c.state_key == user_id,
                    current_state.c.type == "m.room.member",
                    current_state.c.membership == "join",
                )
            )
            return [r[0] for r in rows]
