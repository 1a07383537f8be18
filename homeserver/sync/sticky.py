"""The sticky events section of /sync v3 (MSC4354: `rooms.join.<room>.msc4354_sticky`).

A joined room's unexpired sticky events are delivered once each, whatever the timeline's
limit or filter: an incremental sync gets those positioned since its token; an initial
sync, those of every joined room; a room joined since the token, all of them (the user
could not see them before). An event the room's timeline already carries in the same
response is left out. History visibility does not apply: any joined user may see sticky
events while they are sticky (the MSC).

At most MAX_IN_SYNC per response (rooms just joined excepted, as Synapse): the token then
says how far they went (`SyncToken.sticky`), and the next sync continues from there.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Any

from homeserver.clock import Clock
from homeserver.handlers.client_format import client_event
from homeserver.storage.erased_users import ErasedUsers
from homeserver.storage.events import EventStore
from homeserver.storage.sticky_events import MAX_IN_SYNC, SYNC_SECTION, StickyEventStore, StickyRow
from homeserver.sync.tokens import SyncToken


class StickySection:
    def __init__(self, events: EventStore, clock: Clock, erased: ErasedUsers) -> None:
        self.events = events
        self.erased = erased
        self.store = StickyEventStore(events.db)
        self.clock = clock

    async def add(
        self,
        rooms_join: dict[str, Any],
        since: SyncToken | None,
        upto: int,
        joined: list[str],
        newly: set[str],
        sticky_rooms: Set[str] | None,
        new_room: Callable[[], dict[str, Any]],
        device_id: str | None,
    ) -> int | None:
        """Add the section to the rooms of `rooms_join` (adding rooms with only sticky
        events, made by `new_room`). `joined`: the user's rooms; `newly`: those joined since
        the token.
        `sticky_rooms`: the rooms with sticky rows positioned since the token (None: unknown).
        Returns the position sticky events were delivered up to, if short of `upto`."""
        if not joined:
            return None
        now = self.clock.time_ms()
        if since is None:
            lower, older = 0, joined
        else:
            lower = since.sticky if since.sticky is not None else since.stream
            older = [r for r in joined if r not in newly]
            if sticky_rooms is not None and lower == since.stream:
                # Only rooms with a sticky row since the token can have one to deliver.
                older = [r for r in older if r in sticky_rooms]
        rows = await self.store.in_window(older, lower, upto, now, MAX_IN_SYNC + 1) if older else []
        reached = None
        if len(rows) > MAX_IN_SYNC:
            rows = rows[:MAX_IN_SYNC]
            reached = rows[-1].position
        if newly:
            rows += await self.store.active_in_rooms(newly, upto, now)
        if rows:
            await self._add_rows(rooms_join, rows, now, new_room, device_id)
        return reached

    async def _add_rows(
        self,
        rooms_join: dict[str, Any],
        rows: list[StickyRow],
        now: int,
        new_room: Callable[[], dict[str, Any]],
        device_id: str | None,
    ) -> None:
        in_timeline = {
            (room_id, e.get("event_id"))
            for room_id, room in rooms_join.items()
            for e in room.get("timeline", {}).get("events", ())
        }
        by_room = await format_sticky(self.events, self.erased, rows, now, device_id, in_timeline)
        for room_id, events in by_room.items():
            room = rooms_join.get(room_id)
            if room is None:
                room = rooms_join[room_id] = new_room()
            room[SYNC_SECTION] = {"events": events}


async def format_sticky(
    events: EventStore,
    erased: ErasedUsers,
    rows: list[StickyRow],
    now: int,
    device_id: str | None,
    in_timeline: Set[tuple[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """Room ID -> the sticky events of `rows` in client format, with their time left, but
    those the response's timelines carry ((room, event ID) in `in_timeline`), those
    purged or redacted since (redaction ends stickiness) and erased users' (stale call
    memberships mostly, not sent to other servers either: bridge.sticky). Shared with
    sliding sync."""
    wanted = [r for r in rows if (r.room_id, r.event_id) not in in_timeline]
    if not wanted:
        return {}
    found = await events.get_events([r.event_id for r in wanted])
    gone = set() if erased.nobody else await erased.among({s.event.sender for s in found.values()})
    out: dict[str, list[dict[str, Any]]] = {}
    for row in wanted:
        stored = found.get(row.event_id)
        if stored is None or stored.redacted_by is not None or stored.event.sender in gone:
            continue
        event = client_event(
            stored, now, device_id=device_id, include_room_id=False, sticky_until=row.expires_at
        )
        out.setdefault(row.room_id, []).append(event)
    return out
