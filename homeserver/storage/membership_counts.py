"""How many invites a user sent, and how many rooms they joined, since a time: the counts
behind Synapse's admin API `sent_invite_count` and `cumulative_joined_room_count`.

A past member event's membership is only in its JSON (current_state holds the current one),
so SQL reads it there: SQLite's json_extract, PostgreSQL's json operators. The events are
found through the (room_id, stream_id) index, in the rooms where the user has a member
event (every room they can have sent one in: an invite needs its sender joined), and not
through an index on the sender, which every stored event would pay for; these are an
admin's occasional questions. Times are `origin_server_ts`, which for a local user's events
is when this server made them (Synapse compares its `received_ts`).
"""

from __future__ import annotations

from sqlalchemy import JSON, ColumnElement, cast, func, select, type_coerce

from homeserver.storage.engine import Database
from homeserver.storage.schema import current_state, events

_cs = current_state.c
_ev = events.c


def _member_events_sent(
    db: Database, user_id: str, from_ts: int, membership: str
) -> tuple[ColumnElement[bool], ...]:
    """The conditions for the user's own `membership` member events at or after `from_ts`."""
    document = cast(_ev.json, JSON) if db.is_postgres else type_coerce(_ev.json, JSON)
    rooms = select(_cs.room_id).where(_cs.state_key == user_id, _cs.type == "m.room.member")
    return (
        _ev.room_id.in_(rooms),
        _ev.type == "m.room.member",
        _ev.sender == user_id,
        _ev.origin_server_ts >= from_ts,
        document[("content", "membership")].as_string() == membership,
    )


async def sent_invite_count(db: Database, user_id: str, from_ts: int) -> int:
    """Invites the user sent at or after `from_ts` (ms), to anyone, in any room."""
    q = (
        select(func.count())
        .select_from(events)
        .where(*_member_events_sent(db, user_id, from_ts, "invite"), _ev.state_key != user_id)
    )
    async with db.read() as conn:
        return int((await conn.execute(q)).scalar_one())


async def joined_room_count(db: Database, user_id: str, from_ts: int) -> int:
    """Rooms the user joined at or after `from_ts` (ms), whether they are still in them or
    not; joining one room again counts it once, as in Synapse."""
    q = (
        select(func.count(_ev.room_id.distinct()))
        .select_from(events)
        .where(*_member_events_sent(db, user_id, from_ts, "join"), _ev.state_key == user_id)
    )
    async with db.read() as conn:
        return int((await conn.execute(q)).scalar_one())
