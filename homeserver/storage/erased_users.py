"""This server's erased users: local accounts deactivated with `erase` (Synapse's
`erased_users`). Their events reach readers who were not in the room at the time pruned
(homeserver/handlers/erasure.py), here and over federation.

Every client read of events asks which of its senders are erased, so each worker keeps the
table in memory: read once, then answered from a set. Nobody is erased on most servers,
and `nobody` then says so without a read or a loop over the events. A change (erasure,
reactivation) is broadcast on the "erased_users" topic (homeserver.invalidation): the
other workers forget the set and read it again on their next use; a lost broadcast makes
every worker forget it (`on_reset`). Past MAX_HELD rows the set is not kept: each batch
then asks about its own senders (one query by primary key).

Only local users are ever erased: a remote sender is never in the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.invalidation import Invalidations
from homeserver.storage.engine import Database
from homeserver.storage.schema import erased_users
from homeserver.storage.sqlutil import chunks

TOPIC = "erased_users"
# Erased users held in memory, at most (~100 bytes each); past this, each read asks.
MAX_HELD = 100_000


async def mark_erased(conn: AsyncConnection, user_id: str) -> None:
    """In the caller's transaction; tell `ErasedUsers.changed` once it has committed."""
    await conn.execute(delete(erased_users).where(erased_users.c.user_id == user_id))
    await conn.execute(insert(erased_users).values(user_id=user_id))


async def mark_not_erased(conn: AsyncConnection, user_id: str) -> None:
    """In the caller's transaction; tell `ErasedUsers.changed` once it has committed."""
    await conn.execute(delete(erased_users).where(erased_users.c.user_id == user_id))


class ErasedUsers:
    def __init__(self, db: Database, invalidations: Invalidations | None = None) -> None:
        self.db = db
        self._peers = invalidations or Invalidations()
        self.max_held = MAX_HELD
        # The whole table, once read (None: not read, or forgotten since).
        self._held: frozenset[str] | None = None
        # The table had more than MAX_HELD rows when last read.
        self._too_many = False
        # Bumped by every change: a read that raced one is used once, not kept.
        self._generation = 0
        # The read of the table under way, and the generation it started in.
        self._loading: tuple[int, asyncio.Future[frozenset[str] | None]] | None = None
        self._peers.subscribe(TOPIC, lambda _user_id: self.forget())
        self._peers.on_reset(self.forget)

    @property
    def nobody(self) -> bool:
        """Known without a read: no user is erased (the usual case; the hot paths' check)."""
        return self._held is not None and not self._held

    def forget(self) -> None:
        self._held = None
        self._too_many = False
        self._generation += 1

    def changed(self, user_id: str) -> None:
        """After a committed `mark_erased` or `mark_not_erased`: here and on every worker."""
        self.forget()
        self._peers.broadcast(TOPIC, user_id)

    async def among(self, user_ids: Collection[str]) -> set[str]:
        """Those of `user_ids` who are erased."""
        if not user_ids:
            return set()
        held = self._held
        if held is None and not self._too_many:
            held = await self._load()
        if held is not None:
            return {u for u in user_ids if u in held} if held else set()
        out: set[str] = set()
        async with self.db.read() as conn:
            for chunk in chunks(user_ids):
                rows = await conn.execute(
                    select(erased_users.c.user_id).where(erased_users.c.user_id.in_(chunk))
                )
                out.update(r[0] for r in rows)
        return out

    async def is_erased(self, user_id: str) -> bool:
        return bool(await self.among((user_id,)))

    async def _load(self) -> frozenset[str] | None:
        """The whole table (None past `max_held` rows): one read for all the requests that
        need it at once (every parked sync a change wakes), kept unless a change raced it."""
        loading = self._loading
        if loading is None or loading[0] != self._generation:
            task = asyncio.ensure_future(self._read(self._generation))
            # Retrieved here too, for when every waiter was cancelled.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            loading = self._loading = (self._generation, task)
        return await asyncio.shield(loading[1])

    async def _read(self, generation: int) -> frozenset[str] | None:
        try:
            async with self.db.read() as conn:
                rows = (await conn.execute(select(erased_users.c.user_id).limit(self.max_held + 1))).all()
        finally:
            if self._loading is not None and self._loading[0] == generation:
                self._loading = None
        too_many = len(rows) > self.max_held
        held = None if too_many else frozenset(str(r[0]) for r in rows)
        if generation == self._generation:
            self._held = held
            self._too_many = too_many
        return held
