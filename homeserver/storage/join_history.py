"""Whether a user was already joined to a room at a stream position, from their member
events: a member event after the position does not by itself make the room newly joined
(a new display name or avatar is one too, and must not send the room afresh)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import bindparam, select

from homeserver import jsonutil
from homeserver.storage.engine import Database
from homeserver.storage.schema import events

# Member events walked back per room: past this the room counts as newly joined (a user
# who changed their profile this often since their last sync gets the room afresh).
MAX_STEPS = 10

_MEMBER_EVENT = select(events.c.stream_id, events.c.replaces_state, events.c.json).where(
    events.c.event_id == bindparam("event_id")
)


async def joined_at(db: Database, member_events: Mapping[str, str], position: int) -> set[str]:
    """Of the rooms in `member_events` (room ID -> the user's current member event, a join
    after `position`), those the user was joined to at `position` and stayed joined to since:
    every member event of theirs after it, walked back through `replaces_state`, is a join."""
    out: set[str] = set()
    async with db.read() as conn:
        for room_id, event_id in member_events.items():
            current: str | None = event_id
            for _ in range(MAX_STEPS):
                if current is None:
                    break  # no earlier member event: the first join
                row = (await conn.execute(_MEMBER_EVENT, {"event_id": current})).first()
                if row is None:
                    break
                membership = jsonutil.loads(row[2]).get("content", {}).get("membership")
                if membership != "join":
                    break
                if row[0] <= position:
                    out.add(room_id)
                    break
                current = row[1]
    return out
