"""Thread subscriptions (MSC4306): per (user, room, thread root) the latest state, as
Synapse's `thread_subscriptions` table holds it.

A row is subscribed (manually or `automatic`ally) or unsubscribed; every change moves it to
a new position in the server-wide stream (`stream_id`), which sliding sync's MSC4308
extension and the pagination endpoint read a user's changes by. A request that changes
nothing writes nothing. Rules, as Synapse's store:

- a manual subscription replaces an automatic one; an automatic one never replaces a
  subscription (it would change nothing, or downgrade a manual one);
- an automatic subscription after an unsubscription is refused (`CONFLICTED`) when its
  cause event is not later than the unsubscription: the unsubscription keeps the room's
  highest stream position and depth when it was made, and the cause is compared by stream
  position (by depth when the cause was backfilled, its position then being negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.storage.cs_schema import thread_subscriptions
from homeserver.storage.engine import Database
from homeserver.storage.schema import events, forward_extremities
from homeserver.storage.sqlutil import dialect_insert

_t = thread_subscriptions.c


class Conflicted:
    """An automatic subscription refused: an unsubscription acknowledged its cause event."""

    __slots__ = ()


CONFLICTED: Final = Conflicted()


@dataclass(frozen=True, slots=True)
class Orderings:
    """Where an event sits: its stream position (negative: backfilled) and its depth."""

    stream: int
    depth: int


@dataclass(frozen=True, slots=True)
class Change:
    """One row of a user's changes: subscribed (manually or not) or unsubscribed."""

    stream_id: int
    room_id: str
    thread_root_id: str
    subscribed: bool
    automatic: bool


def skip_automatic(cause: Orderings, unsubscribed_at: Orderings) -> bool:
    """Whether an unsubscription made when the room was at `unsubscribed_at` already
    covers an automatic subscription caused by the event at `cause` (Synapse's rule)."""
    if unsubscribed_at.stream >= 0 and unsubscribed_at.stream >= cause.stream > 0:
        return True
    return cause.stream < 0 and unsubscribed_at.depth >= cause.depth


_ROW = select(_t.subscribed, _t.automatic, _t.unsubscribed_at_stream, _t.unsubscribed_at_depth)


class ThreadSubscriptionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # When this process is the database's only writer: the position of each user's latest
        # change made since it started (taken as the change is written, so before anyone can
        # read it), and a position at or above every change made before (taken on first use).
        self._latest: dict[str, int] = {}
        self._floor: int | None = None

    def may_have_changes(self, user_id: str, after: int) -> bool:
        """False when the user surely has no change positioned after `after` (no read)."""
        if not self.db.exclusive:
            return True
        if self._floor is None:
            self._floor = self.db.current_stream_id
        return after < self._floor or self._latest.get(user_id, 0) > after

    async def _next(self, user_id: str) -> int:
        stream_id = await self.db.next_stream_id()
        self._latest[user_id] = stream_id
        return stream_id

    @staticmethod
    def _key(user_id: str, room_id: str, root_id: str) -> tuple[ColumnElement[bool], ...]:
        return (_t.user_id == user_id, _t.room_id == room_id, _t.event_id == root_id)

    async def get(self, user_id: str, room_id: str, root_id: str) -> bool | None:
        """The subscription's `automatic`, or None when not subscribed."""
        q = select(_t.automatic).where(*self._key(user_id, room_id, root_id), _t.subscribed.is_(True))
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else bool(row[0])

    async def subscribe(
        self, user_id: str, room_id: str, root_id: str, cause: Orderings | None
    ) -> int | Conflicted | None:
        """Subscribe (automatically when `cause`, the orderings of the event that caused
        it, is given). The change's stream position; None when nothing changed; CONFLICTED
        when an unsubscription refuses the automatic subscription."""
        automatic = cause is not None
        key = self._key(user_id, room_id, root_id)
        async with self.db.write() as conn:
            row = await self._locked_row(conn, key)
            if row is None:
                stream_id = await self._next(user_id)
                ins = dialect_insert(conn, thread_subscriptions).values(
                    user_id=user_id,
                    room_id=room_id,
                    event_id=root_id,
                    subscribed=True,
                    automatic=automatic,
                    stream_id=stream_id,
                )
                done = await conn.execute(
                    ins.on_conflict_do_nothing(index_elements=["user_id", "room_id", "event_id"])
                )
                if done.rowcount:
                    return stream_id
                # Another worker inserted it meanwhile: decide against its row.
                row = await self._locked_row(conn, key)
                assert row is not None
            subscribed, was_automatic, at_stream, at_depth = row
            if subscribed and (not was_automatic or automatic):
                return None
            if not subscribed and cause is not None and at_stream is not None and at_depth is not None:
                if skip_automatic(cause, Orderings(int(at_stream), int(at_depth))):
                    return CONFLICTED
            stream_id = await self._next(user_id)
            await conn.execute(
                update(thread_subscriptions)
                .where(*key)
                .values(
                    subscribed=True,
                    automatic=automatic,
                    stream_id=stream_id,
                    unsubscribed_at_stream=None,
                    unsubscribed_at_depth=None,
                )
            )
            return stream_id

    async def unsubscribe(self, user_id: str, room_id: str, root_id: str) -> int | None:
        """Unsubscribe; the change's stream position, or None when not subscribed."""
        key = self._key(user_id, room_id, root_id)
        async with self.db.write() as conn:
            row = await self._locked_row(conn, key)
            if row is None or not row[0]:
                return None
            at_stream, at_depth = await _room_orderings(conn, room_id)
            stream_id = await self._next(user_id)
            await conn.execute(
                update(thread_subscriptions)
                .where(*key)
                .values(
                    subscribed=False,
                    stream_id=stream_id,
                    unsubscribed_at_stream=at_stream,
                    unsubscribed_at_depth=at_depth,
                )
            )
            return stream_id

    @staticmethod
    async def _locked_row(
        conn: AsyncConnection, key: tuple[ColumnElement[bool], ...]
    ) -> tuple[bool, bool, int | None, int | None] | None:
        # FOR UPDATE (PostgreSQL; SQLite has one writer): concurrent changes of one row by
        # several workers are decided one after the other.
        row = (await conn.execute(_ROW.where(*key).with_for_update())).first()
        if row is None:
            return None
        return bool(row[0]), bool(row[1]), row[2], row[3]

    async def subscribers(self, room_id: str, root_id: str) -> frozenset[str]:
        """The users subscribed to a thread (one indexed read)."""
        q = select(_t.user_id).where(_t.room_id == room_id, _t.event_id == root_id, _t.subscribed.is_(True))
        async with self.db.read() as conn:
            return frozenset(r[0] for r in await conn.execute(q))

    async def changes(self, user_id: str, after: int, upto: int, limit: int) -> list[Change]:
        """The user's latest `limit` changes positioned in (after, upto], oldest first."""
        q = (
            select(_t.stream_id, _t.room_id, _t.event_id, _t.subscribed, _t.automatic)
            .where(_t.user_id == user_id, _t.stream_id > after, _t.stream_id <= upto)
            .order_by(_t.stream_id.desc())
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = list(await conn.execute(q))
        rows.reverse()
        return [Change(int(s), r, e, bool(sub), bool(auto)) for s, r, e, sub, auto in rows]


async def _room_orderings(conn: AsyncConnection, room_id: str) -> tuple[int, int]:
    """The room's highest stream position and highest depth, now. The depth is that of its
    forward extremities (every other event is an ancestor of one, so of lower depth): one
    indexed read, not a scan of the room's events."""
    stream = await conn.scalar(select(func.max(events.c.stream_id)).where(events.c.room_id == room_id))
    depth = await conn.scalar(
        select(func.max(events.c.depth))
        .select_from(forward_extremities.join(events, events.c.event_id == forward_extremities.c.event_id))
        .where(forward_extremities.c.room_id == room_id)
    )
    return int(stream or 0), max(int(depth or 0), 1)
