"""Room aliases (#alias:server → !room)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from homeserver.storage.engine import Database
from homeserver.storage.schema import room_aliases


class AliasStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Asked about a missing alias before it is reported missing (application services
        # create bridged rooms on demand); True: look again.
        self.on_missing: Callable[[str], Awaitable[bool]] | None = None

    async def create(self, alias: str, room_id: str, creator: str) -> bool:
        """False if the alias already exists."""
        try:
            async with self.db.write() as conn:
                await conn.execute(insert(room_aliases).values(alias=alias, room_id=room_id, creator=creator))
        except IntegrityError:
            return False
        return True

    async def get(self, alias: str, *, ask: bool = True) -> tuple[str, str] | None:
        """(room_id, creator) for the alias; unless not `ask`, `on_missing` is asked first
        about one that does not exist."""
        found = await self._get(alias)
        if found is None and ask and self.on_missing is not None and await self.on_missing(alias):
            found = await self._get(alias)
        return found

    async def _get(self, alias: str) -> tuple[str, str] | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(room_aliases.c.room_id, room_aliases.c.creator).where(
                        room_aliases.c.alias == alias
                    )
                )
            ).first()
        return (row[0], row[1]) if row else None

    async def delete(self, alias: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(room_aliases).where(room_aliases.c.alias == alias))

    async def for_room(self, room_id: str) -> list[str]:
        async with self.db.read() as conn:
            return [
                r[0]
                for r in await conn.execute(
                    select(room_aliases.c.alias).where(room_aliases.c.room_id == room_id)
                )
            ]
