"""Read receipts (m.read, m.read.private), with stream positions for /sync."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from homeserver.storage.engine import Database
from homeserver.storage.schema import receipts


@dataclass(slots=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str
    event_id: str
    ts: int


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert(self, r: Receipt) -> int:
        async with self.db.write() as conn:
            stream_id = await self.db.next_stream_id()
            res = await conn.execute(
                update(receipts)
                .where(
                    receipts.c.room_id == r.room_id,
                    receipts.c.receipt_type == r.receipt_type,
                    receipts.c.user_id == r.user_id,
                    receipts.c.thread_id == r.thread_id,
                )
                .values(event_id=r.event_id, ts=r.ts, stream_id=stream_id)
            )
            if not res.rowcount:
                await conn.execute(
                    insert(receipts).values(
                        room_id=r.room_id,
                        receipt_type=r.receipt_type,
                        user_id=r.user_id,
                        thread_id=r.thread_id,
                        event_id=r.event_id,
                        ts=r.ts,
                        stream_id=stream_id,
                    )
                )
        return stream_id

    async def get_since(self, room_ids: Collection[str], since: int | None, upto: int) -> list[Receipt]:
        if not room_ids:
            return []
        q = select(
            receipts.c.room_id,
            receipts.c.receipt_type,
            receipts.c.user_id,
            receipts.c.thread_id,
            receipts.c.event_id,
            receipts.c.ts,
        ).where(receipts.c.room_id.in_(list(room_ids)), receipts.c.stream_id <= upto)
        if since is not None:
            q = q.where(receipts.c.stream_id > since)
        async with self.db.read() as conn:
            return [Receipt(*r) for r in await conn.execute(q)]
