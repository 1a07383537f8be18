"""Per-user rate limits a server admin set, kept in memory by every worker.

The table is small (a few bots), so a worker reads all of it once and answers from memory;
a change is broadcast (`Invalidations`, topic "ratelimit_overrides") and the other workers
read it again on their next use.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from homeserver.invalidation import Invalidations
from homeserver.storage.cs_schema import ratelimit_overrides
from homeserver.storage.engine import Database

TOPIC = "ratelimit_overrides"


class RateLimitOverrides:
    def __init__(self, db: Database, invalidations: Invalidations) -> None:
        self.db = db
        self.invalidations = invalidations
        self._all: dict[str, tuple[int, int]] | None = None
        invalidations.subscribe(TOPIC, lambda _user: self._forget())
        invalidations.on_reset(self._forget)

    def _forget(self) -> None:
        self._all = None

    async def get(self, user_id: str) -> tuple[int, int] | None:
        """(messages_per_second, burst_count) for the user, if an admin set them."""
        if self._all is None:
            t = ratelimit_overrides.c
            async with self.db.read() as conn:
                rows = await conn.execute(select(t.user_id, t.messages_per_second, t.burst_count))
                self._all = {str(u): (int(r), int(b)) for u, r, b in rows}
        return self._all.get(user_id)

    async def set(self, user_id: str, value: tuple[int, int] | None) -> None:
        """Set (or, None, remove) the user's override, here and on every worker."""
        t = ratelimit_overrides.c
        async with self.db.write() as conn:
            await conn.execute(delete(ratelimit_overrides).where(t.user_id == user_id))
            if value is not None:
                await conn.execute(
                    insert(ratelimit_overrides).values(
                        user_id=user_id, messages_per_second=value[0], burst_count=value[1]
                    )
                )
        self._forget()
        self.invalidations.broadcast(TOPIC, user_id)
