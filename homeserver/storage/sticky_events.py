"""Sticky events (MSC4354, unstable names): message events a client marks sticky for up to
an hour (`msc4354_sticky: {"duration_ms": N}` at the top level of the PDU), which /sync
then delivers whatever the timeline limit, and which servers push to every server in the
room, new ones included. Element Call keeps its call memberships this way.

An event is sticky until `min(received, origin_server_ts) + min(duration_ms, 1 hour)`,
`received` being when this server stored it (so a sender's clock in the future cannot
stretch it). The `sticky_events` table holds every event that was sticky when stored,
with that end (`expires_at`) and its position in the server-wide stream: the event's own
stream ID, or a later one if it was soft-failed and then accepted (readers that went past
the first position still get it). Rows outlive their stickiness until the periodic
cleanup; every read skips expired ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.events import Event
from homeserver.storage.cs_schema import sticky_events
from homeserver.storage.engine import Database
from homeserver.storage.sqlutil import chunks, dialect_insert

# The unstable names of MSC4354.
FIELD = "msc4354_sticky"
PARAM = "org.matrix.msc4354.sticky_duration_ms"
SYNC_SECTION = "msc4354_sticky"
TTL_FIELD = "msc4354_sticky_duration_ttl_ms"
FEATURE = "org.matrix.msc4354"
SLIDING_EXTENSION = "org.matrix.msc4354.sticky_events"
MAX_DURATION_MS = 3_600_000
# Sticky events in one /sync response (the MSC's suggestion); the rest come in the next.
MAX_IN_SYNC = 100

_t = sticky_events.c


def duration_ms(pdu: dict[str, Any]) -> int | None:
    """The event's sticky duration, capped at an hour, or None if it is not sticky."""
    sticky = pdu.get(FIELD)
    if not isinstance(sticky, dict):
        return None
    duration = sticky.get("duration_ms")
    if type(duration) is not int or duration < 0:
        return None
    return min(duration, MAX_DURATION_MS)


def expires_at(event: Event, received_ms: int) -> int | None:
    """When the event stops being sticky (None: it never was)."""
    if event.is_state():
        return None  # clients cannot send sticky state, and /sync has no place for it
    duration = duration_ms(event.pdu)
    if duration is None:
        return None
    return min(received_ms, event.origin_server_ts) + duration


async def record(
    conn: AsyncConnection, items: Iterable[tuple[Event, int]], now_ms: int, *, soft_failed: bool = False
) -> None:
    """Record the sticky ones among newly stored events (event, stream position), in the
    transaction storing them. Events already expired are not recorded."""
    rows = []
    for event, position in items:
        end = expires_at(event, now_ms)
        if end is not None and end > now_ms:
            rows.append(
                {
                    "event_id": event.event_id,
                    "room_id": event.room_id,
                    "sender": event.sender,
                    "position": position,
                    "expires_at": end,
                    "soft_failed": soft_failed,
                }
            )
    if not rows:
        return
    ins = dialect_insert(conn, sticky_events)
    # A soft-failed event stored again once accepted keeps its first end, and moves on.
    stmt = ins.on_conflict_do_update(
        index_elements=["event_id"],
        set_={"position": ins.excluded.position, "soft_failed": ins.excluded.soft_failed},
    )
    await conn.execute(stmt, rows)


async def forget(conn: AsyncConnection, event_id: str) -> None:
    """The event is no longer sticky (it was redacted: `msc4354_sticky` is not kept)."""
    await conn.execute(delete(sticky_events).where(_t.event_id == event_id))


@dataclass(frozen=True, slots=True)
class StickyRow:
    event_id: str
    room_id: str
    position: int
    expires_at: int


_IN_WINDOW = (
    select(_t.event_id, _t.room_id, _t.position, _t.expires_at)
    .where(
        _t.room_id.in_(bindparam("room_ids", expanding=True)),
        _t.position > bindparam("after"),
        _t.position <= bindparam("upto"),
        _t.expires_at > bindparam("now"),
        _t.soft_failed.is_(False),
    )
    .order_by(_t.position)
    .limit(bindparam("limit"))
)

_ACTIVE_IN_ROOMS = (
    select(_t.event_id, _t.room_id, _t.position, _t.expires_at)
    .where(
        _t.room_id.in_(bindparam("room_ids", expanding=True)),
        _t.position <= bindparam("upto"),
        _t.expires_at > bindparam("now"),
        _t.soft_failed.is_(False),
    )
    .order_by(_t.position)
)


# Entries of each per-database cache below.
CACHE_SIZE = 4_096


class _Caches:
    """Per database (several servers may share a process in tests): the rooms with sticky
    rows in a past window, and events' ends. Neither changes once read: a window's rows are
    all committed when it is read (a re-accepted soft-failed event gets a new, later
    position), and an event's end is fixed when it is recorded; rows only ever go away,
    which readers check anyway."""

    def __init__(self) -> None:
        self.windows: OrderedDict[tuple[int, int], frozenset[str]] = OrderedDict()
        self.ends: OrderedDict[str, int] = OrderedDict()


_CACHES: WeakKeyDictionary[Database, _Caches] = WeakKeyDictionary()


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


class StickyEventStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        caches = _CACHES.get(db)
        if caches is None:
            caches = _CACHES[db] = _Caches()
        self._caches = caches

    async def in_window(
        self, room_ids: Collection[str], after: int, upto: int, now_ms: int, limit: int
    ) -> list[StickyRow]:
        """Unexpired sticky events of these rooms positioned in (after, upto], in stream
        order, at most `limit`."""
        if not room_ids or after >= upto:
            return []
        out: list[StickyRow] = []
        async with self.db.read() as conn:
            for chunk in chunks(room_ids):
                params = {"room_ids": chunk, "after": after, "upto": upto, "now": now_ms, "limit": limit}
                out.extend(StickyRow(*r) for r in await conn.execute(_IN_WINDOW, params))
        out.sort(key=lambda r: r.position)  # merges the chunks' answers
        return out[:limit]

    async def rooms_in_window(self, after: int, upto: int) -> frozenset[str]:
        """The rooms with sticky rows positioned in (after, upto], expired ones included
        (read once per window: every sync of the window asks)."""
        if after >= upto:
            return frozenset()
        windows = self._caches.windows
        known = windows.get((after, upto))
        if known is not None:
            return known
        q = select(_t.room_id).where(_t.position > after, _t.position <= upto).distinct()
        async with self.db.read() as conn:
            found = frozenset(r[0] for r in await conn.execute(q))
        _remember(windows, (after, upto), found)
        return found

    async def active_in_rooms(self, room_ids: Collection[str], upto: int, now_ms: int) -> list[StickyRow]:
        """Every unexpired sticky event of these rooms positioned up to `upto` (for rooms a
        user just joined: all of them, in stream order)."""
        out: list[StickyRow] = []
        async with self.db.read() as conn:
            for chunk in chunks(room_ids):
                params = {"room_ids": chunk, "upto": upto, "now": now_ms}
                out.extend(StickyRow(*r) for r in await conn.execute(_ACTIVE_IN_ROOMS, params))
        out.sort(key=lambda r: r.position)
        return out

    async def expiry_of(self, event_ids: Collection[str], now_ms: int) -> dict[str, int]:
        """event ID -> when it stops being sticky, for those still sticky. Ends read once
        are remembered (a call room's events are in every member's sync)."""
        ends = self._caches.ends
        out = {e: end for e in event_ids if (end := ends.get(e)) is not None and end > now_ms}
        missing = [e for e in event_ids if e not in ends]
        if not missing:
            return out
        async with self.db.read() as conn:
            for chunk in chunks(missing):
                rows = await conn.execute(
                    select(_t.event_id, _t.expires_at).where(
                        _t.event_id.in_(chunk), _t.expires_at > now_ms, _t.soft_failed.is_(False)
                    )
                )
                for event_id, end in rows:
                    out[event_id] = end
                    _remember(ends, event_id, end)
        return out

    async def delete_expired(self, now_ms: int) -> int:
        async with self.db.write() as conn:
            result = await conn.execute(delete(sticky_events).where(_t.expires_at <= now_ms))
        return int(result.rowcount or 0)


# Federation (bridge.sticky) ---------------------------------------------------------------


async def soft_failed_in_room(
    conn: AsyncConnection, room_id: str, now_ms: int, senders: Collection[str] | None = None
) -> list[str]:
    """The room's unexpired soft-failed sticky events (only those of `senders`, if given),
    in stream order: the ones to check again when the room's authorising state changes."""
    q = select(_t.event_id).where(_t.room_id == room_id, _t.soft_failed.is_(True), _t.expires_at > now_ms)
    if senders is not None:
        if not senders:
            return []
        q = q.where(_t.sender.in_(sorted(senders)))
    return [r[0] for r in await conn.execute(q.order_by(_t.position))]


_ACCEPT = (
    sticky_events.update()
    .where(_t.event_id == bindparam("b_event_id"), _t.soft_failed.is_(True))
    .values(position=bindparam("b_position"), soft_failed=False)
)


async def accept_soft_failed(conn: AsyncConnection, positions: dict[str, int]) -> None:
    """Soft-failed sticky events that now pass the auth rules: no longer soft-failed, and
    moved to these fresh stream positions, so that every syncing client gets them."""
    if positions:
        await conn.execute(_ACCEPT, [{"b_event_id": e, "b_position": p} for e, p in positions.items()])


async def own_active_in_room(
    conn: AsyncConnection, room_id: str, server_name: str, now_ms: int
) -> list[tuple[str, str]]:
    """(event ID, sender) of the room's unexpired, not soft-failed sticky events sent by
    users of `server_name`, in stream order (what that server pushes to a new one)."""
    q = (
        select(_t.event_id, _t.sender)
        .where(
            _t.room_id == room_id,
            _t.expires_at > now_ms,
            _t.soft_failed.is_(False),
            _t.sender.endswith(":" + server_name, autoescape=True),
        )
        .order_by(_t.position)
    )
    return [(r[0], r[1]) for r in await conn.execute(q)]
