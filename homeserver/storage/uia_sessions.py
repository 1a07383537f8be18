"""User-interactive auth sessions, shared by every worker (see `uia_sessions`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from homeserver import jsonutil
from homeserver.storage.bulk import BulkInsert
from homeserver.storage.cs_schema import uia_sessions
from homeserver.storage.engine import Database

_UPSERT = BulkInsert(uia_sessions, ("session_id", "last_used_ms", "data_json"), upsert_keys=("session_id",))


class UIASessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, session_id: str, not_before_ms: int) -> dict[str, Any] | None:
        """The session's data, unless it was last used before `not_before_ms` (expired)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(uia_sessions.c.data_json).where(
                        uia_sessions.c.session_id == session_id,
                        uia_sessions.c.last_used_ms >= not_before_ms,
                    )
                )
            ).first()
        if row is None:
            return None
        data = jsonutil.loads(row[0])
        return data if isinstance(data, dict) else None

    async def put(self, session_id: str, last_used_ms: int, data: dict[str, Any]) -> None:
        async with self.db.write() as conn:
            await _UPSERT.run(conn, [(session_id, last_used_ms, jsonutil.dumps(data))])

    async def delete(self, session_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(uia_sessions).where(uia_sessions.c.session_id == session_id))

    async def prune(self, not_before_ms: int, keep: int) -> None:
        """Drop expired sessions, then the least recently used beyond `keep`."""
        beyond = (
            select(uia_sessions.c.session_id).order_by(uia_sessions.c.last_used_ms.desc()).offset(keep)
        )
        async with self.db.write() as conn:
            await conn.execute(delete(uia_sessions).where(uia_sessions.c.last_used_ms < not_before_ms))
            # No count first: the newest `keep` are skipped, whatever lies beyond them goes.
            await conn.execute(delete(uia_sessions).where(uia_sessions.c.session_id.in_(beyond)))

    async def count(self) -> int:
        async with self.db.read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(uia_sessions)) or 0)
