"""Content reports from users (events, rooms, users), kept for server administrators."""

from __future__ import annotations

from sqlalchemy import insert

from homeserver.storage.cs_schema import reports
from homeserver.storage.engine import Database


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self,
        kind: str,
        reporter: str,
        ts: int,
        *,
        room_id: str | None = None,
        event_id: str | None = None,
        target_user_id: str | None = None,
        reason: str | None = None,
        score: int | None = None,
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                insert(reports).values(
                    kind=kind,
                    reporter=reporter,
                    room_id=room_id,
                    event_id=event_id,
                    target_user_id=target_user_id,
                    reason=reason,
                    score=score,
                    ts=ts,
                )
            )
