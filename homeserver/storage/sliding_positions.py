"""Sliding sync positions in the database, for servers run as several workers (see
homeserver.sync.sliding.connections): one row per kept position of a connection."""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, delete, insert, select

from homeserver.storage.cs_schema import sliding_sync_positions
from homeserver.storage.engine import Database

ConnKey = tuple[str, str, str]
_c = sliding_sync_positions.c


def _of(key: ConnKey) -> ColumnElement[bool]:
    user_id, device_id, conn_id = key
    return and_(_c.user_id == user_id, _c.device_id == device_id, _c.conn_id == conn_id)


class SlidingPositionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self, key: ConnKey, pos: str) -> str | None:
        """The position's data (JSON), if it is kept."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(_c.data_json).where(_of(key), _c.pos == pos))).first()
        return str(row[0]) if row else None

    async def save(self, key: ConnKey, kept: str | None, pos: str, data_json: str, now_ms: int) -> None:
        """Store `pos` and drop the connection's other positions but `kept` (the one the
        request named: the client may still retry it)."""
        user_id, device_id, conn_id = key
        async with self.db.write() as conn:
            stale = delete(sliding_sync_positions).where(_of(key))
            if kept is not None:
                stale = stale.where(_c.pos != kept)
            await conn.execute(stale)
            await conn.execute(
                insert(sliding_sync_positions).values(
                    user_id=user_id,
                    device_id=device_id,
                    conn_id=conn_id,
                    pos=pos,
                    created_ts=now_ms,
                    data_json=data_json,
                )
            )

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        """A deleted device's connections go with it."""
        async with self.db.write() as conn:
            await conn.execute(
                delete(sliding_sync_positions).where(_c.user_id == user_id, _c.device_id.in_(device_ids))
            )
