"""Message search index: lower-cased text of unencrypted messages, names and topics.

Portable across SQLite and PostgreSQL (LIKE over a narrow table, one row per
event and key, indexed by room and position); a full-text index per dialect can
replace it without changing the interface.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.storage.bulk import BulkInsert
from homeserver.storage.cs_schema import event_search
from homeserver.storage.engine import Database

_INSERT = BulkInsert(event_search, ("event_id", "key", "room_id", "stream_id", "value"))


@dataclass(slots=True, frozen=True)
class SearchHit:
    event_id: str
    room_id: str
    stream_id: int
    value: str


class SearchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def index(self, event_id: str, room_id: str, stream_id: int, key: str, text: str) -> None:
        async with self.db.write() as conn:
            await self.index_in(conn, [(event_id, room_id, stream_id, key, text)])

    async def index_in(self, conn: AsyncConnection, entries: list[tuple[str, str, int, str, str]]) -> None:
        """Index (event_id, room_id, stream_id, key, text) entries in the caller's transaction."""
        await self.db.insert(conn, _INSERT, [(e, k, r, s, text.lower()) for e, r, s, k, text in entries])

    async def remove(self, event_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(event_search).where(event_search.c.event_id == event_id))

    def _query(self, room_ids: Collection[str], keys: Collection[str], terms: list[str]) -> object:
        return and_(
            event_search.c.room_id.in_(list(room_ids)),
            event_search.c.key.in_(list(keys)),
            *[event_search.c.value.contains(t, autoescape=True) for t in terms],
        )

    async def search(
        self,
        room_ids: Collection[str],
        keys: Collection[str],
        terms: list[str],
        before: int | None,
        limit: int,
    ) -> list[SearchHit]:
        if not room_ids or not terms:
            return []
        where = self._query(room_ids, keys, terms)
        q = select(
            event_search.c.event_id, event_search.c.room_id, event_search.c.stream_id, event_search.c.value
        )
        q = q.where(where)  # type: ignore[arg-type]
        if before is not None:
            q = q.where(event_search.c.stream_id < before)
        q = q.order_by(event_search.c.stream_id.desc()).limit(limit)
        async with self.db.read() as conn:
            return [SearchHit(e, r, int(s), v) for e, r, s, v in await conn.execute(q)]

    async def count(self, room_ids: Collection[str], keys: Collection[str], terms: list[str]) -> int:
        if not room_ids or not terms:
            return 0
        q = select(func.count()).select_from(event_search).where(self._query(room_ids, keys, terms))  # type: ignore[arg-type]
        async with self.db.read() as conn:
            return int((await conn.execute(q)).scalar() or 0)
