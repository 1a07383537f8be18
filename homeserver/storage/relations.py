"""Reading event relations (edits, annotations, references, threads) from the events table.

The events table carries `rel_type`/`relates_to` for every event with an
`m.relates_to` (replies as rel_type "m.in_reply_to"), indexed by
(relates_to, rel_type); these queries only read it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import and_, func, select

from homeserver import jsonutil
from homeserver.storage.engine import Database
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.schema import events

REPLY = "m.in_reply_to"


@dataclass(slots=True, frozen=True)
class ThreadSummary:
    root_id: str
    count: int
    latest_event_id: str
    latest_stream: int


class RelationsStore:
    def __init__(self, db: Database, events_store: EventStore) -> None:
        self.db = db
        self.events = events_store

    async def child_ids(self, parent_ids: Collection[str], room_id: str, cap: int) -> list[str]:
        if not parent_ids:
            return []
        q = (
            select(events.c.event_id)
            .where(
                events.c.relates_to.in_(list(parent_ids)),
                events.c.room_id == room_id,
                events.c.rel_type != REPLY,
            )
            .limit(cap)
        )
        async with self.db.read() as conn:
            return [r[0] for r in await conn.execute(q)]

    async def relation_of(self, event_id: str) -> tuple[str | None, str | None] | None:
        """(rel_type, relates_to) of a known event; None if the event is unknown."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(events.c.rel_type, events.c.relates_to).where(events.c.event_id == event_id)
                )
            ).first()
        return (row[0], row[1]) if row else None

    async def children(
        self,
        parent_ids: Collection[str],
        room_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        lower: int | None,
        upper: int,
        from_pos: int | None,
        to_pos: int | None,
        forwards: bool,
        limit: int,
    ) -> list[StoredEvent]:
        """Children of the given events within the stream window [lower, upper], paginated."""
        q = select(*EventStore._cols).where(
            events.c.relates_to.in_(list(parent_ids)),
            events.c.room_id == room_id,
            events.c.rel_type != REPLY,
            events.c.rel_type.is_not(None),
            events.c.outlier.is_(False),
            events.c.stream_id <= upper,
        )
        if lower is not None:
            q = q.where(events.c.stream_id >= lower)
        if rel_type is not None:
            q = q.where(events.c.rel_type == rel_type)
        if event_type is not None:
            q = q.where(events.c.type == event_type)
        if forwards:
            if from_pos is not None:
                q = q.where(events.c.stream_id > from_pos)
            if to_pos is not None:
                q = q.where(events.c.stream_id <= to_pos)
            q = q.order_by(events.c.stream_id.asc())
        else:
            if from_pos is not None:
                q = q.where(events.c.stream_id <= from_pos)
            if to_pos is not None:
                q = q.where(events.c.stream_id > to_pos)
            q = q.order_by(events.c.stream_id.desc())
        async with self.db.read() as conn:
            return await self.events._load(conn, q.limit(limit))

    async def annotation_counts(
        self, parent_ids: Collection[str], cap: int = 5000
    ) -> dict[str, list[tuple[str, str, int]]]:
        """parent -> [(event type, key, count)] of unredacted annotations, most used first."""
        if not parent_ids:
            return {}
        q = (
            select(events.c.relates_to, events.c.type, events.c.json)
            .where(
                events.c.relates_to.in_(list(parent_ids)),
                events.c.rel_type == "m.annotation",
                events.c.redacted_by.is_(None),
            )
            .limit(cap)
        )
        counts: dict[str, dict[tuple[str, str], int]] = {}
        async with self.db.read() as conn:
            for parent, type_, raw in await conn.execute(q):
                rel = jsonutil.loads(raw).get("content", {}).get("m.relates_to")
                key = rel.get("key") if isinstance(rel, dict) else None
                if isinstance(key, str):
                    per = counts.setdefault(parent, {})
                    per[(type_, key)] = per.get((type_, key), 0) + 1
        return {
            parent: sorted(((t, k, n) for (t, k), n in per.items()), key=lambda x: -x[2])
            for parent, per in counts.items()
        }

    async def latest_edits(self, parents: Collection[tuple[str, str]]) -> dict[str, StoredEvent]:
        """parent -> its newest m.replace by the parent's own sender. `parents` is (event_id, sender)."""
        if not parents:
            return {}
        senders = dict(parents)
        latest = (
            select(events.c.relates_to, events.c.sender, func.max(events.c.stream_id).label("s"))
            .where(
                events.c.relates_to.in_(list(senders)),
                events.c.rel_type == "m.replace",
                events.c.redacted_by.is_(None),
            )
            .group_by(events.c.relates_to, events.c.sender)
            .subquery()
        )
        q = select(*EventStore._cols).select_from(events.join(latest, and_(events.c.stream_id == latest.c.s)))
        async with self.db.read() as conn:
            found = await self.events._load(conn, q)
        out: dict[str, StoredEvent] = {}
        for s in found:
            rel = s.event.content.get("m.relates_to")
            parent = rel.get("event_id") if isinstance(rel, dict) else None
            # Only the original sender may edit; edits of other types are ignored.
            if isinstance(parent, str) and senders.get(parent) == s.event.sender:
                prev = out.get(parent)
                if prev is None or prev.stream_id < s.stream_id:
                    out[parent] = s
        return out

    async def thread_summaries(self, root_ids: Collection[str], upper: int) -> dict[str, ThreadSummary]:
        if not root_ids:
            return {}
        q = (
            select(events.c.relates_to, func.count(), func.max(events.c.stream_id))
            .where(
                events.c.relates_to.in_(list(root_ids)),
                events.c.rel_type == "m.thread",
                events.c.stream_id <= upper,
            )
            .group_by(events.c.relates_to)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
            if not rows:
                return {}
            ids = dict(
                (
                    await conn.execute(
                        select(events.c.stream_id, events.c.event_id).where(
                            events.c.stream_id.in_([int(r[2]) for r in rows])
                        )
                    )
                ).all()
            )
        return {
            root: ThreadSummary(root, int(n), ids[int(s)], int(s)) for root, n, s in rows if int(s) in ids
        }

    async def participated(self, root_ids: Collection[str], user_id: str) -> set[str]:
        """Threads the user started or replied in."""
        if not root_ids:
            return set()
        async with self.db.read() as conn:
            replied = {
                r[0]
                for r in await conn.execute(
                    select(events.c.relates_to)
                    .distinct()
                    .where(
                        events.c.relates_to.in_(list(root_ids)),
                        events.c.rel_type == "m.thread",
                        events.c.sender == user_id,
                    )
                )
            }
            started = {
                r[0]
                for r in await conn.execute(
                    select(events.c.event_id).where(
                        events.c.event_id.in_(list(root_ids)), events.c.sender == user_id
                    )
                )
            }
        return replied | started

    async def references(self, parent_ids: Collection[str]) -> dict[str, list[str]]:
        if not parent_ids:
            return {}
        q = (
            select(events.c.relates_to, events.c.event_id)
            .where(events.c.relates_to.in_(list(parent_ids)), events.c.rel_type == "m.reference")
            .order_by(events.c.stream_id)
        )
        out: dict[str, list[str]] = {}
        async with self.db.read() as conn:
            for parent, eid in await conn.execute(q):
                out.setdefault(parent, []).append(eid)
        return out

    async def threads(
        self, room_id: str, *, lower: int | None, upper: int, before: int | None, limit: int
    ) -> list[tuple[str, int]]:
        """(root_id, latest activity position) of a room's threads, most recently active first."""
        latest = func.max(events.c.stream_id)
        q = (
            select(events.c.relates_to, latest)
            .where(
                events.c.room_id == room_id,
                events.c.rel_type == "m.thread",
                events.c.stream_id <= upper,
            )
            .group_by(events.c.relates_to)
        )
        if lower is not None:
            q = q.where(events.c.stream_id >= lower)
        if before is not None:
            q = q.having(latest < before)
        q = q.order_by(latest.desc()).limit(limit)
        async with self.db.read() as conn:
            rows = [(r[0], int(r[1])) for r in await conn.execute(q)]
        return rows
