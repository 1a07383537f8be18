"""Per-device inboxes of send-to-device messages.

Each queued message gets its own server-wide stream position, so a device's inbox is
delivered as "rows in (since, upto]" and confirmed by the next sync's `since`. Rows are
deleted once confirmed; `e2e_stream_marks` keeps the highest position ever used so a
restart never re-issues a position a client may already hold as its token.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select

from homeserver import jsonutil
from homeserver.storage.e2ee_schema import device_inbox, device_inbox_txns, e2e_stream_marks
from homeserver.storage.engine import Database
from homeserver.storage.sqlutil import chunks, upsert

_MARK = "to_device"


@dataclass(slots=True, frozen=True)
class InboxBatch:
    messages: list[dict[str, Any]]
    # Stream position of the last message returned (0 if none).
    last_stream_id: int
    # More messages are pending in the window than were returned.
    limited: bool
    # Messages at or below `since` are still stored (the device has confirmed them: delete them).
    confirmed_pending: bool = False


class ToDeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(
        self,
        sender: str,
        event_type: str,
        messages: list[tuple[str, str, dict[str, Any]]],
        txn: tuple[str, str, str] | None,
        ts: int,
    ) -> list[str] | None:
        """Queue messages [(user, device, content)] in one transaction.

        Returns the recipient user IDs, or None if `txn` (user, device, txn_id) was already
        used (the request is a retry and was delivered the first time).
        """
        async with self.db.write() as conn:
            if txn is not None:
                res = await conn.execute(
                    upsert(
                        conn,
                        device_inbox_txns,
                        {"user_id": txn[0], "device_id": txn[1], "txn_id": txn[2], "created_ts": ts},
                        ["user_id", "device_id", "txn_id"],
                        [],
                    )
                )
                if res.rowcount == 0:
                    return None
            rows = []
            for user_id, device_id, content in messages:
                rows.append(
                    {
                        "stream_id": await self.db.next_stream_id(),
                        "user_id": user_id,
                        "device_id": device_id,
                        "message_json": jsonutil.dumps(
                            {"sender": sender, "type": event_type, "content": content}
                        ),
                    }
                )
            if rows:
                await conn.execute(insert(device_inbox), rows)
                await conn.execute(
                    upsert(
                        conn,
                        e2e_stream_marks,
                        {"name": _MARK, "stream_id": rows[-1]["stream_id"]},
                        ["name"],
                        ["stream_id"],
                    )
                )
        return sorted({m[0] for m in messages})

    async def fetch(
        self, user_id: str, device_id: str, since: int | None, upto: int, limit: int
    ) -> InboxBatch:
        """Messages in (since, upto] in arrival order, at most `limit` (one connection)."""
        di = device_inbox.c
        mine = (di.user_id == user_id, di.device_id == device_id)
        q = select(di.stream_id, di.message_json).where(*mine, di.stream_id <= upto)
        confirmed = False
        async with self.db.read() as conn:
            if since is not None:
                q = q.where(di.stream_id > since)
                oldest = (await conn.execute(select(func.min(di.stream_id)).where(*mine))).scalar()
                confirmed = oldest is not None and oldest <= since
            rows = (await conn.execute(q.order_by(di.stream_id).limit(limit + 1))).all()
        limited = len(rows) > limit
        rows = rows[:limit]
        last = int(rows[-1][0]) if rows else 0
        return InboxBatch([jsonutil.loads(r[1]) for r in rows], last, limited, confirmed)

    async def delete_confirmed(self, user_id: str, device_id: str, upto: int) -> int:
        di = device_inbox.c
        async with self.db.write() as conn:
            res = await conn.execute(
                delete(device_inbox).where(
                    di.user_id == user_id, di.device_id == device_id, di.stream_id <= upto
                )
            )
            return int(res.rowcount or 0)

    async def delete_devices(self, user_id: str, device_ids: Collection[str]) -> None:
        async with self.db.write() as conn:
            for part in chunks(device_ids):
                await conn.execute(
                    delete(device_inbox).where(
                        device_inbox.c.user_id == user_id, device_inbox.c.device_id.in_(part)
                    )
                )
                await conn.execute(
                    delete(device_inbox_txns).where(
                        device_inbox_txns.c.user_id == user_id, device_inbox_txns.c.device_id.in_(part)
                    )
                )

    async def prune_txns(self, older_than_ts: int) -> int:
        async with self.db.write() as conn:
            res = await conn.execute(
                delete(device_inbox_txns).where(device_inbox_txns.c.created_ts < older_than_ts)
            )
            return int(res.rowcount or 0)

    async def pending_count(self, user_id: str, device_id: str) -> int:
        async with self.db.read() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(device_inbox)
                        .where(device_inbox.c.user_id == user_id, device_inbox.c.device_id == device_id)
                    )
                ).scalar_one()
            )
