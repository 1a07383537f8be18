"""Sync filters uploaded by clients (POST /user/{userId}/filter)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select

from homeserver import jsonutil
from homeserver.storage.engine import Database
from homeserver.storage.schema import filters


class FilterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, user_id: str, filter_json: dict[str, Any]) -> str:
        async with self.db.write() as conn:
            current = (
                await conn.execute(select(func.max(filters.c.filter_id)).where(filters.c.user_id == user_id))
            ).scalar()
            filter_id = int(current or 0) + 1
            await conn.execute(
                insert(filters).values(user_id=user_id, filter_id=filter_id, json=jsonutil.dumps(filter_json))
            )
        return str(filter_id)

    async def get(self, user_id: str, filter_id: str) -> dict[str, Any] | None:
        try:
            fid = int(filter_id)
        except ValueError:
            return None
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(filters.c.json).where(filters.c.user_id == user_id, filters.c.filter_id == fid)
                )
            ).first()
        return jsonutil.loads(row[0]) if row else None
