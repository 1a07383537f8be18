"""Lookups for single client endpoints: the event nearest a timestamp in a room
(/timestamp_to_event) and the rooms two users are both joined to (/mutual_rooms)."""

from __future__ import annotations

from sqlalchemy import select

from homeserver.storage.engine import Database
from homeserver.storage.schema import current_state, events

_cs = current_state.c
_ev = events.c


async def event_near_timestamp(
    db: Database, room_id: str, ts: int, forwards: bool, lower: int | None, upper: int
) -> tuple[str, int] | None:
    """(event_id, origin_server_ts) of the room's first event at or after `ts` (forwards),
    or its last at or before it, among the events at stream positions in [lower, upper].

    The room's events are scanned by stream position (there is no index by timestamp: it
    would cost every message one more B-tree); ties go to the earlier stream position."""
    q = select(_ev.event_id, _ev.origin_server_ts).where(
        _ev.room_id == room_id, _ev.outlier.is_(False), _ev.stream_id <= upper
    )
    if lower is not None:
        q = q.where(_ev.stream_id >= lower)
    if forwards:
        q = q.where(_ev.origin_server_ts >= ts).order_by(_ev.origin_server_ts, _ev.stream_id)
    else:
        q = q.where(_ev.origin_server_ts <= ts).order_by(_ev.origin_server_ts.desc(), _ev.stream_id.desc())
    async with db.read() as conn:
        row = (await conn.execute(q.limit(1))).first()
    return (row[0], int(row[1])) if row is not None else None


async def timeline_position(db: Database, room_id: str, event_id: str) -> tuple[int, int] | None:
    """(stream position, origin_server_ts) of an event in the room's timeline (backfilled
    history included, outliers not), or None."""
    q = select(_ev.stream_id, _ev.origin_server_ts).where(
        _ev.event_id == event_id, _ev.room_id == room_id, _ev.outlier.is_(False)
    )
    async with db.read() as conn:
        row = (await conn.execute(q)).first()
    return (int(row[0]), int(row[1])) if row is not None else None


async def mutual_rooms(db: Database, user_id: str, other: str, limit: int | None = None) -> list[str]:
    """The rooms both users are joined to, sorted (the first `limit` of them)."""
    mine = current_state.alias("mine")
    theirs = current_state.alias("theirs")
    q = (
        select(mine.c.room_id)
        .join(theirs, theirs.c.room_id == mine.c.room_id)
        .where(
            mine.c.type == "m.room.member",
            mine.c.state_key == user_id,
            mine.c.membership == "join",
            theirs.c.type == "m.room.member",
            theirs.c.state_key == other,
            theirs.c.membership == "join",
        )
        .order_by(mine.c.room_id)
        .limit(limit)
    )
    async with db.read() as conn:
        return [r[0] for r in await conn.execute(q)]
