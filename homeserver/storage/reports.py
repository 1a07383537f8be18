"""Content reports from users (events, rooms, users), kept for server administrators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select

from homeserver.storage.cs_schema import reports
from homeserver.storage.engine import Database


@dataclass(slots=True)
class Report:
    id: int
    kind: str
    reporter: str
    room_id: str | None
    event_id: str | None
    target_user_id: str | None
    reason: str | None
    score: int | None
    ts: int


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

    async def page(
        self,
        kind: str,
        offset: int,
        limit: int,
        *,
        newest_first: bool = True,
        reporter_like: str | None = None,
        room_like: str | None = None,
    ) -> tuple[list[Report], int]:
        """One page of a kind's reports and how many match in all; the filters match
        part of the reporter's user ID or of the room ID."""
        r = reports.c
        where: list[Any] = [r.kind == kind]
        if reporter_like:
            where.append(r.reporter.contains(reporter_like, autoescape=True))
        if room_like:
            where.append(r.room_id.contains(room_like, autoescape=True))
        order = (r.ts.desc(), r.id.desc()) if newest_first else (r.ts.asc(), r.id.asc())
        async with self.db.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(reports).where(*where))).scalar_one()
            rows = await conn.execute(
                select(reports).where(*where).order_by(*order).offset(offset).limit(limit)
            )
            return [Report(**row) for row in rows.mappings()], int(total)

    async def get(self, kind: str, report_id: int) -> Report | None:
        async with self.db.read() as conn:
            row = (
                (await conn.execute(select(reports).where(reports.c.kind == kind, reports.c.id == report_id)))
                .mappings()
                .first()
            )
        return Report(**row) if row else None

    async def delete(self, kind: str, report_id: int) -> bool:
        async with self.db.write() as conn:
            done = await conn.execute(
                delete(reports).where(reports.c.kind == kind, reports.c.id == report_id)
            )
        return bool(done.rowcount)
