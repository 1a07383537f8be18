"""Per-user account data, global ("" room) and per room, with stream positions for /sync."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from homeserver import jsonutil
from homeserver.storage.engine import Database
from homeserver.storage.schema import account_data

GlobalData = dict[str, dict[str, Any]]
RoomData = dict[str, dict[str, dict[str, Any]]]


class AccountDataStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, user_id: str, room_id: str | None, type: str, content: dict[str, Any]) -> int:
        room_key = room_id or ""
        async with self.db.write() as conn:
            stream_id = await self.db.next_stream_id()
            res = await conn.execute(
                update(account_data)
                .where(
                    account_data.c.user_id == user_id,
                    account_data.c.room_id == room_key,
                    account_data.c.type == type,
                )
                .values(content=jsonutil.dumps(content), stream_id=stream_id)
            )
            if not res.rowcount:
                await conn.execute(
                    insert(account_data).values(
                        user_id=user_id,
                        room_id=room_key,
                        type=type,
                        content=jsonutil.dumps(content),
                        stream_id=stream_id,
                    )
                )
        return stream_id

    async def for_room(self, user_id: str, room_id: str) -> dict[str, dict[str, Any]]:
        """The user's account data in one room, by type."""
        c = account_data.c
        q = select(c.type, c.content).where(c.user_id == user_id, c.room_id == room_id)
        async with self.db.read() as conn:
            return {t: jsonutil.loads(content) for t, content in await conn.execute(q)}

    async def of_type_by_room(self, user_id: str, type: str) -> dict[str, dict[str, Any]]:
        """The user's room account data of one type (`m.tag`, say), by room: one statement."""
        c = account_data.c
        q = select(c.room_id, c.content).where(c.user_id == user_id, c.type == type, c.room_id != "")
        async with self.db.read() as conn:
            return {room_id: jsonutil.loads(content) for room_id, content in await conn.execute(q)}

    async def get(self, user_id: str, room_id: str | None, type: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(account_data.c.content).where(
                        account_data.c.user_id == user_id,
                        account_data.c.room_id == (room_id or ""),
                        account_data.c.type == type,
                    )
                )
            ).first()
        return jsonutil.loads(row[0]) if row else None

    async def get_since(self, user_id: str, since: int | None, upto: int) -> tuple[GlobalData, RoomData]:
        """Account data changed in (since, upto]; everything when since is None."""
        q = select(account_data.c.room_id, account_data.c.type, account_data.c.content).where(
            account_data.c.user_id == user_id, account_data.c.stream_id <= upto
        )
        if since is not None:
            q = q.where(account_data.c.stream_id > since)
        glob: GlobalData = {}
        per_room: RoomData = {}
        async with self.db.read() as conn:
            for room_id, type_, content in await conn.execute(q):
                if room_id:
                    per_room.setdefault(room_id, {})[type_] = jsonutil.loads(content)
                else:
                    glob[type_] = jsonutil.loads(content)
        return glob, per_room
