"""Rendezvous sessions (MSC4108) in the database, so that the two devices may reach any
worker. Each write is one conditional statement: a PUT whose If-Match no longer holds
changes nothing, whichever worker it reaches."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update

from homeserver.storage.cs_schema import rendezvous_sessions
from homeserver.storage.engine import Database


@dataclass(frozen=True, slots=True)
class Rendezvous:
    body: str
    etag: str
    modified_ts: int
    expires_ts: int


class RendezvousStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, session_id: str, session: Rendezvous, max_live: int) -> bool:
        """Store a new session, sweeping expired ones; False if `max_live` are still live."""
        t = rendezvous_sessions.c
        async with self.db.write() as conn:
            await conn.execute(delete(rendezvous_sessions).where(t.expires_ts <= session.modified_ts))
            live = (await conn.execute(select(func.count()).select_from(rendezvous_sessions))).scalar_one()
            if live >= max_live:
                return False
            await conn.execute(
                insert(rendezvous_sessions).values(
                    session_id=session_id,
                    body=session.body,
                    etag=session.etag,
                    modified_ts=session.modified_ts,
                    expires_ts=session.expires_ts,
                )
            )
        return True

    async def get(self, session_id: str, now: int) -> Rendezvous | None:
        t = rendezvous_sessions.c
        q = select(t.body, t.etag, t.modified_ts, t.expires_ts).where(
            t.session_id == session_id, t.expires_ts > now
        )
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else Rendezvous(str(row[0]), str(row[1]), int(row[2]), int(row[3]))

    async def replace(self, session_id: str, if_match: str, body: str, etag: str, now: int) -> bool:
        """Write `body` if the session is live and its ETag is still `if_match`."""
        t = rendezvous_sessions.c
        q = (
            update(rendezvous_sessions)
            .where(t.session_id == session_id, t.etag == if_match, t.expires_ts > now)
            .values(body=body, etag=etag, modified_ts=now)
        )
        async with self.db.write() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def delete(self, session_id: str) -> bool:
        async with self.db.write() as conn:
            q = delete(rendezvous_sessions).where(rendezvous_sessions.c.session_id == session_id)
            return bool((await conn.execute(q)).rowcount)
