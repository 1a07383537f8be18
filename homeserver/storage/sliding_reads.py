"""Reads for sliding sync's room list: each room's bump stamp."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, select

from homeserver.storage.engine import Database
from homeserver.storage.schema import events

# The event types that move a room up the list (MSC4186 `bump_stamp`): a change of name or
# a member's profile does not.
BUMP_TYPES = (
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
)

_ev = events.c
# Walks the (room_id, stream_id) index backwards to the first bump event: cheap however
# long the room's history is.
_LATEST_BUMP = (
    select(_ev.stream_id)
    .where(
        _ev.room_id == bindparam("room_id"),
        _ev.stream_id <= bindparam("upto"),
        _ev.type.in_(BUMP_TYPES),
        _ev.outlier.is_(False),
    )
    .order_by(_ev.stream_id.desc())
    .limit(1)
)


async def latest_bumps(db: Database, room_ids: Collection[str], upto: int) -> dict[str, int]:
    """The stream position of each room's latest bump event at or below `upto` (rooms
    without one are left out)."""
    found: dict[str, int] = {}
    if not room_ids:
        return found
    async with db.read() as conn:
        for room_id in room_ids:
            value = (await conn.execute(_LATEST_BUMP, {"room_id": room_id, "upto": upto})).scalar()
            if value is not None:
                found[room_id] = int(value)
    return found
