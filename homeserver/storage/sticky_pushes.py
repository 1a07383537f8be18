"""Pending pushes of sticky events (MSC4354) to servers that newly joined a room.

When a server joins a room, this server pushes it its own unexpired sticky events of the
room once the new server holds its join (bridge/sticky.py). Until then the push is a row
of `sticky_pending_pushes`, one per (room, destination): written when the join arrives,
moved on at every attempt that finds the join not yet there, deleted in the transaction
that queues the push (or when it is given up). A process that starts leading the outbound
queue resumes the rows it finds, so a restart, or a worker crashing, loses none.

The row is the claim: `take` deletes it in the caller's transaction and says whether it
was there, so of two processes resuming the same row only one queues the push. A newer
join of the same server (it left and came back) replaces the row; the older attempt then
finds neither its row to move on nor to take, and stops.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.storage.schema import sticky_pending_pushes
from homeserver.storage.sqlutil import dialect_insert

_t = sticky_pending_pushes.c


@dataclass(slots=True)
class PendingPush:
    room_id: str
    destination: str
    join_event_id: str
    scheduled_ts: int
    next_attempt_ts: int


async def record(conn: AsyncConnection, push: PendingPush) -> None:
    """Record a push (replacing one for an older join of the same server to the room)."""
    values = {
        "room_id": push.room_id,
        "destination": push.destination,
        "join_event_id": push.join_event_id,
        "scheduled_ts": push.scheduled_ts,
        "next_attempt_ts": push.next_attempt_ts,
    }
    ins = dialect_insert(conn, sticky_pending_pushes).values(**values)
    changed = ("join_event_id", "scheduled_ts", "next_attempt_ts")
    await conn.execute(
        ins.on_conflict_do_update(
            index_elements=["room_id", "destination"], set_={c: ins.excluded[c] for c in changed}
        )
    )


def _this(push: PendingPush) -> ColumnElement[bool]:
    return and_(
        _t.room_id == push.room_id,
        _t.destination == push.destination,
        _t.join_event_id == push.join_event_id,
    )


async def postpone(conn: AsyncConnection, push: PendingPush) -> bool:
    """Store the push's next attempt time; False if its row is gone (taken by another
    process, or replaced by a newer join's)."""
    q = update(sticky_pending_pushes).where(_this(push)).values(next_attempt_ts=push.next_attempt_ts)
    return bool((await conn.execute(q)).rowcount)


async def take(conn: AsyncConnection, push: PendingPush) -> bool:
    """Delete the push's row, in the transaction that queues the push (or gives it up);
    False if it was not there (another process took it, or a newer join replaced it)."""
    return bool((await conn.execute(delete(sticky_pending_pushes).where(_this(push)))).rowcount)


async def pending(
    conn: AsyncConnection, due_before: int | None = None, limit: int = 10_000
) -> list[PendingPush]:
    """The pending pushes, soonest first (only those whose next attempt is before
    `due_before`, if given: long overdue, no process is looking after them)."""
    q = select(_t.room_id, _t.destination, _t.join_event_id, _t.scheduled_ts, _t.next_attempt_ts)
    if due_before is not None:
        q = q.where(_t.next_attempt_ts < due_before)
    rows = await conn.execute(q.order_by(_t.next_attempt_ts).limit(limit))
    return [PendingPush(*r) for r in rows]
