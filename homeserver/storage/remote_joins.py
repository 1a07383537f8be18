"""Rooms a worker is joining over federation (make_join/send_join), for the other workers.

While a worker joins a room, PDUs for the room that reach it wait for the join to be stored
(bridge.events_in). With several workers behind one name, the resident server's PDUs may
reach another worker, which does not know the room yet: it finds the join here and waits
too. A row says "`joiner` is joining `room_id`; PDUs for it wait until `until_ts` at most";
it is written when the join begins and deleted if the join fails. One that succeeded is
left to run out (a worker that looked for the room just before the join was stored finds
it still, and then the room); run-out rows go with the next join's write.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.storage.schema import federation_joining_rooms
from homeserver.storage.sqlutil import upsert

_t = federation_joining_rooms.c


async def record(conn: AsyncConnection, room_id: str, joiner: str, until_ts: int, now_ms: int) -> None:
    """`joiner` is joining the room: PDUs for it wait until `until_ts` at most."""
    await conn.execute(delete(federation_joining_rooms).where(_t.until_ts <= now_ms))
    values = {"room_id": room_id, "joiner": joiner, "until_ts": until_ts}
    await conn.execute(upsert(conn, federation_joining_rooms, values, ["room_id", "joiner"], ["until_ts"]))


async def forget(conn: AsyncConnection, room_id: str, joiner: str) -> None:
    """`joiner`'s join of the room failed: PDUs for it need not wait."""
    await conn.execute(delete(federation_joining_rooms).where(_t.room_id == room_id, _t.joiner == joiner))


async def joining_until(conn: AsyncConnection, room_id: str, now_ms: int) -> int | None:
    """Until when PDUs for the room wait for a worker's join of it (None: no one is joining)."""
    q = select(func.max(_t.until_ts)).where(_t.room_id == room_id, _t.until_ts > now_ms)
    until = (await conn.execute(q)).scalar()
    return None if until is None else int(until)
