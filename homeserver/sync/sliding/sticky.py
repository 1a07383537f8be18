"""Sliding sync's sticky events extension (MSC4480; MSC4354's unstable names, as Synapse and
matrix-js-sdk speak them): `extensions["org.matrix.msc4354.sticky_events"]`.

Request: `{"enabled": true, "limit": N, "since": "sticky_<position>"}` (`limit` defaults to,
and is capped at, MAX_IN_SYNC). Response: `{"next_batch": "sticky_<position>", "rooms":
{room_id: {"events": [...]}}}`, sent whenever the extension is on. It holds the unexpired
sticky events of the joined rooms the request's lists match (inside their ranges or not)
or its subscriptions name, positioned after `since` (all of them without one), once each,
in stream order, each with `unsigned.msc4354_sticky_duration_ttl_ms`. An event the same
response's room timeline carries is left out (the client takes it from there). More than
`limit`: `next_batch` says how far they went, and the next request naming it gets the rest.

As /sync v3 (MSC4354: a user who joins a room gets all its unexpired sticky events), and
beyond Synapse so far: a room joined since the connection's previous response (since
`since`, on a new connection), or sent whole in this response (newly in a list's range or
subscribed), gets all its unexpired ones, outside the limit (a client such as
matrix-js-sdk drops those of rooms it does not hold yet, expecting them again).

The position is the client's (`since`, as Synapse). A request that leaves the extension's
config out (it stays on, as the other extensions do) continues from the previous response's
`next_batch`, which the connection's position keeps (in the database too, with workers).
History visibility does not apply: any joined user may see sticky events (the MSC).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Set
from dataclasses import dataclass
from typing import Any

from homeserver.clock import Clock
from homeserver.errors import bad_json
from homeserver.storage.erased_users import ErasedUsers
from homeserver.storage.events import EventStore
from homeserver.storage.join_history import joined_at
from homeserver.storage.sticky_events import MAX_IN_SYNC, SLIDING_EXTENSION, StickyEventStore, StickyRow
from homeserver.sync.sticky import format_sticky

NAME = SLIDING_EXTENSION
_TOKEN = re.compile(r"^sticky_([0-9]{1,18})$")


@dataclass(frozen=True, slots=True)
class StickyConfig:
    limit: int
    # The position the client holds (0: none, send everything).
    since: int
    # Whether the request carried the extension's config (else the connection's position).
    given: bool


def token(position: int) -> str:
    return f"sticky_{position}"


def parse_config(raw: Any) -> StickyConfig:
    """The extension's config in a request (400 M_BAD_JSON if malformed)."""
    if not isinstance(raw, Mapping):
        return StickyConfig(MAX_IN_SYNC, 0, False)
    limit = raw.get("limit", MAX_IN_SYNC)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise bad_json(f"extensions.{NAME}.limit must be a non-negative integer")
    since = raw.get("since")
    position = 0
    if since is not None:
        match = _TOKEN.match(since) if isinstance(since, str) else None
        if match is None:
            raise bad_json(f"extensions.{NAME}.since must be a next_batch of this extension")
        position = int(match.group(1))
    return StickyConfig(min(limit, MAX_IN_SYNC), position, True)


def since_for(extensions: Mapping[str, Any], stored: int | None) -> int:
    """Where this request's sticky events start: its `since`, or the connection's position
    when the request leaves the config out."""
    config = parse_config(extensions.get(NAME))
    return config.since if config.given or stored is None else stored


@dataclass(slots=True)
class StickyInput:
    device_id: str | None
    config: StickyConfig
    # The position to continue from when the request carried no config.
    stored: int | None
    upto: int
    # The rooms in scope, with the stream position and ID of the user's member event.
    joined_at: dict[str, tuple[int, str]]
    # Rooms joined after this position are new to the client: the connection's previous
    # position, when the extension was on there (None: the client's `since`).
    joined_after: int | None
    # Rooms sent whole in this response.
    initial_rooms: Collection[str]
    # The rooms with sticky rows in (window_since, upto], when known.
    window_since: int | None
    sticky_rooms: Set[str] | None
    # The response's rooms (their timelines are not repeated).
    rooms_out: Mapping[str, Any]


class StickyExtension:
    def __init__(self, events: EventStore, clock: Clock, erased: ErasedUsers) -> None:
        self.events = events
        self.erased = erased
        self.store = StickyEventStore(events.db)
        self.clock = clock

    async def compute(self, inp: StickyInput) -> tuple[dict[str, Any], int]:
        """The extension's response and the position it reached (its `next_batch`)."""
        config = inp.config
        lower = config.since if config.given or inp.stored is None else inp.stored
        if config.limit == 0 or not inp.joined_at:
            # Nothing read: the position stays (as Synapse), or moves on with no room in scope.
            reached = lower if config.limit == 0 else max(lower, inp.upto)
            return {"next_batch": token(reached), "rooms": {}}, reached
        now = self.clock.time_ms()
        scope = list(inp.joined_at)
        # Only rooms with a sticky row in the window can have one to deliver (the window
        # summary says which; else they are read once per window: the store remembers).
        known = inp.sticky_rooms if inp.window_since == lower else None
        if known is None:
            known = await self.store.rooms_in_window(lower, inp.upto)
        windowed = [r for r in scope if r in known]
        rows = []
        if windowed:
            rows = await self.store.in_window(windowed, lower, inp.upto, now, config.limit + 1)
        reached = max(lower, inp.upto)
        if len(rows) > config.limit:
            rows = rows[: config.limit]
            reached = rows[-1].position
        if lower > 0:
            # Those before `since` of the rooms the client could not have them for.
            initial = set(inp.initial_rooms)
            after = lower if inp.joined_after is None else inp.joined_after
            # Joined since: the member event moved past `after` and they were not joined
            # then (a new display name moves it too).
            moved = {r: event_id for r, (at, event_id) in inp.joined_at.items() if at > after}
            fresh = set(moved) - await joined_at(self.events.db, moved, after) if moved else set()
            fresh.update(r for r in inp.joined_at if r in initial)
            if fresh:
                rows = await self.store.active_in_rooms(fresh, min(lower, inp.upto), now) + rows
        return {"next_batch": token(reached), "rooms": await self._rooms(inp, rows, now)}, reached

    async def _rooms(self, inp: StickyInput, rows: list[StickyRow], now: int) -> dict[str, Any]:
        in_timeline = {
            (room_id, e.get("event_id"))
            for room_id, room in inp.rooms_out.items()
            for e in room.get("timeline", ())
        }
        by_room = await format_sticky(self.events, self.erased, rows, now, inp.device_id, in_timeline)
        return {room_id: {"events": events} for room_id, events in by_room.items()}
