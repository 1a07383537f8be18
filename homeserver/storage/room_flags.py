"""Per-room flags kept beside the timeline: public in the directory, forgotten by a user,
blocked by a server admin."""

from __future__ import annotations

from sqlalchemy import and_, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.storage.engine import Database
from homeserver.storage.schema import blocked_rooms, room_forgotten, rooms

_UNFORGET = delete(room_forgotten).where(
    room_forgotten.c.room_id == bindparam("room"),
    room_forgotten.c.user_id.in_(bindparam("users", expanding=True)),
)
# Users per statement: well within SQLite's limit of bound variables.
_UNFORGET_CHUNK = 500


class RoomFlags:
    """Mixed into EventStore, which owns `db`."""

    db: Database

    async def set_room_public(self, room_id: str, public: bool) -> None:
        async with self.db.write() as conn:
            await conn.execute(update(rooms).where(rooms.c.room_id == room_id).values(is_public=public))

    async def is_room_public(self, room_id: str) -> bool | None:
        """Whether the room is published in the directory; None for a room this server lacks."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(rooms.c.is_public).where(rooms.c.room_id == room_id))).first()
        return None if row is None else bool(row[0])

    async def forget_room(self, user_id: str, room_id: str) -> None:
        async with self.db.write() as conn:
            exists = (
                await conn.execute(
                    select(room_forgotten.c.room_id).where(
                        and_(room_forgotten.c.user_id == user_id, room_forgotten.c.room_id == room_id)
                    )
                )
            ).first()
            if not exists:
                await conn.execute(insert(room_forgotten).values(user_id=user_id, room_id=room_id))

    async def forgotten_rooms(self, user_id: str) -> set[str]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(room_forgotten.c.room_id).where(room_forgotten.c.user_id == user_id)
            )
            return {r[0] for r in rows}

    async def unforget_room_for(self, conn: AsyncConnection, room_id: str, user_ids: list[str]) -> None:
        """`unforget_room` for many users (a room's joined members, when its state is set)."""
        for start in range(0, len(user_ids), _UNFORGET_CHUNK):
            chunk = user_ids[start : start + _UNFORGET_CHUNK]
            await conn.execute(_UNFORGET, {"room": room_id, "users": chunk})

    async def unforget_room(self, conn: AsyncConnection, user_id: str, room_id: str) -> None:
        await conn.execute(
            delete(room_forgotten).where(
                room_forgotten.c.user_id == user_id, room_forgotten.c.room_id == room_id
            )
        )

    async def room_blocked_by(self, room_id: str) -> str | None:
        """The admin who blocked the room, or None if it is not blocked."""
        q = select(blocked_rooms.c.user_id).where(blocked_rooms.c.room_id == room_id)
        async with self.db.read() as conn:
            found = (await conn.execute(q)).scalar_one_or_none()
        return str(found) if found is not None else None

    async def set_room_blocked(self, room_id: str, by: str | None) -> None:
        """Block the room (`by`: the admin), or (None) unblock it."""
        async with self.db.write() as conn:
            await conn.execute(delete(blocked_rooms).where(blocked_rooms.c.room_id == room_id))
            if by is not None:
                await conn.execute(insert(blocked_rooms).values(room_id=room_id, user_id=by))
