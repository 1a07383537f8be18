"""Presence rows (one per user) with stream positions, and the room-sharing queries presence needs."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, or_, select, update

from homeserver.storage.cs_schema import presence
from homeserver.storage.engine import Database
from homeserver.storage.room_lookups import mutual_rooms
from homeserver.storage.schema import current_state


@dataclass(slots=True, frozen=True)
class PresenceRow:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    currently_active: bool
    stream_id: int


_COLS = (
    presence.c.user_id,
    presence.c.state,
    presence.c.status_msg,
    presence.c.last_active_ts,
    presence.c.currently_active,
    presence.c.stream_id,
)


def _row(r: Any) -> PresenceRow:
    return PresenceRow(r[0], r[1], r[2], int(r[3]), bool(r[4]), int(r[5]))


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def changed_between(self, after: int, upto: int) -> list[PresenceRow]:
        """Everyone whose presence changed in (after, upto], in stream order."""
        q = select(*_COLS).where(presence.c.stream_id > after, presence.c.stream_id <= upto)
        async with self.db.read() as conn:
            return [_row(r) for r in await conn.execute(q.order_by(presence.c.stream_id))]

    async def get(self, user_id: str) -> PresenceRow | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(*_COLS).where(presence.c.user_id == user_id))).first()
        return _row(row) if row else None

    async def set(
        self, user_id: str, state: str, status_msg: str | None, last_active_ts: int, currently_active: bool
    ) -> int:
        values = dict(
            state=state,
            status_msg=status_msg,
            last_active_ts=last_active_ts,
            currently_active=currently_active,
        )
        async with self.db.write() as conn:
            stream_id = await self.db.next_stream_id()
            res = await conn.execute(
                update(presence).where(presence.c.user_id == user_id).values(stream_id=stream_id, **values)
            )
            if not res.rowcount:
                await conn.execute(insert(presence).values(user_id=user_id, stream_id=stream_id, **values))
        return stream_id

    async def not_offline(self) -> list[PresenceRow]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(*_COLS).where(presence.c.state != "offline"))
            return [_row(r) for r in rows]

    async def for_rooms_since(
        self, room_ids: Collection[str], extra_users: Collection[str], since: int | None, upto: int
    ) -> list[PresenceRow]:
        """Presence of everyone joined to `room_ids` (plus `extra_users`) changed in (since, upto]."""
        members = select(current_state.c.state_key).where(
            current_state.c.room_id.in_(list(room_ids)),
            current_state.c.type == "m.room.member",
            current_state.c.membership == "join",
        )
        who: Any = presence.c.user_id.in_(members)
        if extra_users:
            who = or_(who, presence.c.user_id.in_(list(extra_users)))
        q = select(*_COLS).where(who, presence.c.stream_id <= upto)
        if since is not None:
            q = q.where(presence.c.stream_id > since)
        async with self.db.read() as conn:
            return [_row(r) for r in await conn.execute(q)]

    async def share_a_room(self, a: str, b: str) -> bool:
        return bool(await mutual_rooms(self.db, a, b, limit=1))
