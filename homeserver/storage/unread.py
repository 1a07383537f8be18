"""Unread notification counts: a user's push actions after their read receipts.

An unthreaded read receipt covers every thread of the room; a threaded one only its own
thread. Counting is a range scan over the user's push actions in the room after the
receipt, so a room left unread costs in proportion to its unread notifications, on every
/sync that reports the room.

`UnreadCounts.at` (for /sync) therefore keeps, per process, the counts of rooms with many
unread notifications as of the stream position `upto` they were counted at, with the read
positions they were counted against. The next time, it counts only the actions of events
after that position and adds them, provided that, in the same statement:

- the room's read positions are still those (else the room is counted afresh);
- no push action for an event at or below that position was written since. Actions are
  written in their event's own transaction, except for events persisted outside the
  message batches (state, remote events), whose actions follow in a later transaction;
  those "late" writes record their stream position in `event_push_changes.late_stream_id`.

Push actions are never changed, and deleted only by a history purge, which records its
change as a late write too (`record_counts_changed`); every row at or below a sync's `upto`
has committed when the sync reads, so the sum equals a fresh count. Every check reads the
database, so the cache is correct on any number of workers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    select,
    union_all,
)

from homeserver.storage.cs_schema import event_push_actions, event_push_changes
from homeserver.storage.engine import Database
from homeserver.storage.fast_reads import FastQuery, in_array
from homeserver.storage.schema import events, receipts

READ_RECEIPTS = ("m.read", "m.read.private")
# Counts at or above this many notifications are kept between syncs; below it a fresh
# count is as cheap as the check, and parked syncs keep no entry.
KEEP_FROM = 32
MAX_ENTRIES = 20_000
# At most this many delta statements per call (one per distinct kept position).
MAX_DELTA_GROUPS = 2
# No bound: every action (PushActionStore.unread_counts, outside /sync).
UNBOUNDED = 2**62


@dataclass(slots=True)
class Counts:
    notifications: int = 0
    highlights: int = 0

    def to_json(self) -> dict[str, int]:
        return {"notification_count": self.notifications, "highlight_count": self.highlights}


RoomCounts = dict[str, Counts]  # thread_id ("main" or a thread root) -> counts


RoomMatch = Callable[[Any], Any]  # a room ID column -> the condition that it is one of the rooms


def receipt_positions(user: Any, rooms: RoomMatch) -> Any:
    """(room_id, thread_id, pos): the newest read position per room and receipt thread
    ("" for unthreaded receipts), for the rooms `rooms` matches."""
    rc = receipts.c
    return (
        select(
            rc.room_id.label("room_id"),
            rc.thread_id.label("thread_id"),
            func.max(events.c.stream_id).label("pos"),
        )
        .select_from(receipts.join(events, events.c.event_id == rc.event_id))
        .where(
            rc.user_id == user,
            # Literals, not a list: a list would be an expanding parameter (see FastQuery).
            rc.receipt_type.in_([literal(r) for r in READ_RECEIPTS]),
            rooms(rc.room_id),
        )
        .group_by(rc.room_id, rc.thread_id)
        .cte("receipt_positions")
    )


def _statement(delta: bool, pg: bool) -> Any:
    """Rows (kind, room_id, thread_id, a, b): 'r' read positions (a = pos), 'a' counts of
    actions of events in (after, upto] (a = notifications, b = highlights) and, for a
    delta, 'l' rooms with late actions written after `after` (a = position). `pg`: the
    rooms are an array parameter, so the statement compiles once (`FastQuery`)."""
    epa = event_push_actions.c
    user: Any = bindparam("user_id")
    expanding: Any = bindparam("room_ids", expanding=True)
    rooms: RoomMatch = (lambda c: in_array(c, "room_ids")) if pg else (lambda c: c.in_(expanding))
    after: Any = bindparam("after", type_=BigInteger)
    pos = receipt_positions(user, rooms)
    unthreaded = pos.alias("unthreaded")
    threaded = pos.alias("threaded")
    zero: Any = literal(0, Integer)
    parts: list[Any] = [
        select(literal_column("'r'"), pos.c.room_id, pos.c.thread_id, pos.c.pos, zero),
        select(
            literal_column("'a'"),
            epa.room_id,
            epa.thread_id,
            func.count(),
            func.sum(case((epa.highlight.is_(True), 1), else_=0)),
        )
        .select_from(
            event_push_actions.outerjoin(
                unthreaded, and_(unthreaded.c.room_id == epa.room_id, unthreaded.c.thread_id == literal(""))
            ).outerjoin(
                threaded, and_(threaded.c.room_id == epa.room_id, threaded.c.thread_id == epa.thread_id)
            )
        )
        .where(
            epa.user_id == user,
            rooms(epa.room_id),
            epa.event_stream > after,
            epa.event_stream <= bindparam("upto", type_=BigInteger),
            epa.event_stream > func.coalesce(unthreaded.c.pos, 0),
            epa.event_stream > func.coalesce(threaded.c.pos, 0),
        )
        .group_by(epa.room_id, epa.thread_id),
    ]
    if delta:
        epc = event_push_changes.c
        parts.append(
            select(literal_column("'l'"), epc.room_id, literal(""), epc.late_stream_id, zero).where(
                epc.user_id == user, rooms(epc.room_id), epc.late_stream_id > after
            )
        )
    return union_all(*parts)


_FULL = FastQuery(_statement(delta=False, pg=False), _statement(delta=False, pg=True))
_DELTA = FastQuery(_statement(delta=True, pg=False), _statement(delta=True, pg=True))


@dataclass(slots=True)
class _Kept:
    upto: int
    read: dict[str, int]
    counts: RoomCounts


@dataclass(slots=True)
class _Read:
    read: dict[str, dict[str, int]]
    counts: dict[str, RoomCounts]
    late: set[str]


class UnreadCounts:
    def __init__(self, db: Database, keep_from: int = KEEP_FROM, max_entries: int = MAX_ENTRIES) -> None:
        self.db = db
        self.keep_from = keep_from
        self.max_entries = max_entries
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()

    def __len__(self) -> int:
        """How many rooms' counts are kept."""
        return len(self._kept)

    async def full(
        self, user_id: str, room_ids: Collection[str], upto: int = UNBOUNDED
    ) -> dict[str, RoomCounts]:
        """room_id -> thread -> counts of the actions of events at or below `upto`."""
        if not room_ids:
            return {}
        return (await self._read(_FULL, user_id, room_ids, 0, upto)).counts

    async def at(self, user_id: str, room_ids: Collection[str], upto: int) -> dict[str, RoomCounts]:
        """As `full(user_id, room_ids, upto)`, adding to counts kept from an earlier sync."""
        out: dict[str, RoomCounts] = {}
        fresh: list[str] = []
        by_after: dict[int, list[str]] = {}
        for room_id in room_ids:
            kept = self._kept.get((user_id, room_id))
            if kept is None or kept.upto > upto:
                fresh.append(room_id)
            else:
                by_after.setdefault(kept.upto, []).append(room_id)
        # Rooms kept at the same position are checked in one statement. Rooms counted in
        # different syncs were kept at different positions: past the largest few groups, a
        # fresh count in the one statement below beats a statement per group.
        groups = sorted(by_after.items(), key=lambda g: len(g[1]), reverse=True)
        for _, rooms in groups[MAX_DELTA_GROUPS:]:
            fresh.extend(rooms)
        for after, rooms in groups[:MAX_DELTA_GROUPS]:
            read = await self._read(_DELTA, user_id, rooms, after, upto)
            for room_id in rooms:
                key = (user_id, room_id)
                kept = self._kept[key]
                if room_id in read.late or read.read.get(room_id, {}) != kept.read:
                    fresh.append(room_id)
                    continue
                counts = _plus(kept.counts, read.counts.get(room_id, {}))
                kept.upto = upto
                kept.counts = counts
                self._kept.move_to_end(key)
                out[room_id] = counts
        if fresh:
            read = await self._read(_FULL, user_id, fresh, 0, upto)
            for room_id in fresh:
                counts = read.counts.get(room_id, {})
                self._keep(user_id, room_id, upto, read.read.get(room_id, {}), counts)
                if counts:
                    out[room_id] = counts
        return {r: c for r, c in out.items() if c}

    def _keep(self, user_id: str, room_id: str, upto: int, read: dict[str, int], counts: RoomCounts) -> None:
        key = (user_id, room_id)
        if sum(c.notifications for c in counts.values()) < self.keep_from:
            self._kept.pop(key, None)
            return
        self._kept[key] = _Kept(upto, read, counts)
        self._kept.move_to_end(key)
        if len(self._kept) > self.max_entries:
            self._kept.popitem(last=False)

    async def _read(
        self, query: FastQuery, user_id: str, room_ids: Collection[str], after: int, upto: int
    ) -> _Read:
        out = _Read({}, {}, set())
        params = {"user_id": user_id, "room_ids": list(room_ids), "after": after, "upto": upto}
        async with self.db.read() as conn:
            for kind, room_id, thread_id, a, b in await query.rows(conn, params):
                if kind == "a":
                    out.counts.setdefault(room_id, {})[thread_id] = Counts(int(a or 0), int(b or 0))
                elif kind == "r":
                    out.read.setdefault(room_id, {})[thread_id] = int(a)
                else:
                    out.late.add(room_id)
        return out


def _plus(a: RoomCounts, b: RoomCounts) -> RoomCounts:
    """Per-thread sums, as new objects (counts handed out earlier are never changed)."""
    out = {t: Counts(c.notifications, c.highlights) for t, c in a.items()}
    for thread, c in b.items():
        total = out.setdefault(thread, Counts())
        total.notifications += c.notifications
        total.highlights += c.highlights
    return out
