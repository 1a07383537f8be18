"""Custom profile fields (anything but the display name and avatar), as JSON per field."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update

from homeserver import jsonutil
from homeserver.storage.cs_schema import profile_fields
from homeserver.storage.engine import Database


class ProfileFieldStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all_of(self, user_id: str) -> dict[str, Any]:
        q = select(profile_fields.c.field, profile_fields.c.value_json).where(
            profile_fields.c.user_id == user_id
        )
        async with self.db.read() as conn:
            return {field: jsonutil.loads(value) for field, value in await conn.execute(q)}

    async def set(self, user_id: str, field: str, value: Any) -> None:
        encoded = jsonutil.dumps(value)
        pf = profile_fields.c
        async with self.db.write() as conn:
            done = await conn.execute(
                update(profile_fields)
                .where(pf.user_id == user_id, pf.field == field)
                .values(value_json=encoded)
            )
            if not done.rowcount:
                await conn.execute(
                    profile_fields.insert().values(user_id=user_id, field=field, value_json=encoded)
                )

    async def delete(self, user_id: str, field: str | None = None) -> None:
        """One field, or (None) all of the user's."""
        q = delete(profile_fields).where(profile_fields.c.user_id == user_id)
        if field is not None:
            q = q.where(profile_fields.c.field == field)
        async with self.db.write() as conn:
            await conn.execute(q)
