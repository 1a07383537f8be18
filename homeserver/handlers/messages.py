"""Reading room history: /messages, /context, /event, /members and state, with visibility.

Visibility follows the room's current m.room.history_visibility: members
see history (from their join when it is "joined"); former members see up to
the moment they left; "world_readable" rooms are visible to everyone. Erased
users' events come pruned to those who were not joined at them (handlers/erasure.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, forbidden
from homeserver.handlers.client_format import format_events
from homeserver.handlers.erasure import ErasureFilter
from homeserver.storage.engine import Database
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.sync.filter import EventFilter
from homeserver.sync.tokens import pagination_token, parse_pagination_token

MAX_LIMIT = 1000


@dataclass(slots=True)
class Window:
    """The stream range a user may read in a room."""

    lower: int | None
    upper: int


class MessageHandler:
    def __init__(self, db: Database, events: EventStore, clock: Clock, erasure: ErasureFilter) -> None:
        self.db = db
        self.events = events
        self.clock = clock
        self.erasure = erasure
        # Fetches older history over federation; returns how many events it stored (bridge/).
        self.backfill: Callable[[str], Awaitable[int]] | None = None
        # Jump to a date where this server's history falls short: asks servers in the room
        # (room, ts, forwards) and returns the event they name, stored here (bridge/).
        self.remote_timestamp: Callable[[str, int, bool], Awaitable[str | None]] | None = None
        # Adds unsigned.m.relations to formatted events, in place (relations module).
        self.bundler: Callable[[list[dict[str, Any]], str], Awaitable[None]] | None = None

    async def _timeline(
        self, stored: list[StoredEvent], device_id: str | None, user_id: str, review: bool = False
    ) -> list[dict[str, Any]]:
        """Timeline events as clients see them, with bundled aggregations (edits, threads ...).
        `review`: a server admin's, which shows erased users' events whole."""
        if not review:
            stored = await self.erasure.for_client(user_id, stored)
        formatted = await self._format(stored, device_id)
        if self.bundler is not None:
            await self.bundler(formatted, user_id)
        return formatted

    async def _backwards(
        self, room_id: str, after: int | None, upto: int, limit: int, event_filter: EventFilter
    ) -> list[StoredEvent]:
        return await self.events.room_events(
            room_id,
            after=after,
            upto=upto,
            limit=limit,
            backwards=True,
            types=event_filter.types,
            not_types=event_filter.not_types,
        )

    async def visible_window(self, room_id: str, user_id: str) -> Window:
        if await self.events.get_room_version(room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        current = self.db.current_stream_id
        vis_state = await self.events.get_current_state(room_id, [("m.room.history_visibility", "")])
        vis_ev = vis_state.get(("m.room.history_visibility", ""))
        visibility = vis_ev.event.content.get("history_visibility", "shared") if vis_ev else "shared"
        membership = await self.events.get_membership(room_id, user_id)
        if membership is None:
            if visibility == "world_readable":
                return Window(None, current)
            raise forbidden("You are not a member of this room")
        state, _event_id, stream = membership
        if state == "join":
            return Window(stream if visibility == "joined" else None, current)
        if state in ("leave", "ban"):
            return Window(None, stream)
        if state == "invite" and visibility in ("invited", "shared", "world_readable"):
            return Window(None, stream)
        raise forbidden("You cannot see this room's history")

    async def _format(self, stored: list[StoredEvent], device_id: str | None) -> list[dict[str, Any]]:
        return await format_events(self.events, stored, self.clock.time_ms(), device_id=device_id)

    async def messages(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        from_token: str | None,
        to_token: str | None,
        direction: str,
        limit: int,
        event_filter: EventFilter,
        lazy_load_members: bool,
        window: Window | None = None,
    ) -> dict[str, Any]:
        """The spec's /messages; `window`: the history the reader may see, instead of the
        user's (a server admin's review reads all of it, erased users' events whole)."""
        review = window is not None
        if window is None:
            window = await self.visible_window(room_id, user_id)
        limit = max(1, min(limit, MAX_LIMIT))
        backwards = direction == "b"
        if direction not in ("b", "f"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be b or f")
        start: int | None
        if from_token is not None:
            start = parse_pagination_token(from_token)
        else:
            # Backfilled history has negative positions: a forward read from the start has no floor.
            start = window.upper if backwards else None
        bound = parse_pagination_token(to_token) if to_token else None
        if backwards:
            upto = min(start if start is not None else window.upper, window.upper)
            after = window.lower - 1 if window.lower is not None else None
            if bound is not None:
                after = bound if after is None else max(after, bound)
            batch = await self._backwards(room_id, after, upto, limit, event_filter)
            if (
                len(batch) < limit
                and self.backfill is not None
                and after is None
                and not any(s.event.type == "m.room.create" for s in batch)
            ):
                # We hold no older events but the room is older: ask a server in the room.
                if await self.backfill(room_id):
                    batch = await self._backwards(room_id, after, upto, limit, event_filter)
        else:
            after = start
            if window.lower is not None:
                after = window.lower - 1 if after is None else max(after, window.lower - 1)
            upto = window.upper if bound is None else min(window.upper, bound)
            batch = await self.events.room_events(
                room_id,
                after=after,
                upto=upto,
                limit=limit,
                backwards=False,
                types=event_filter.types,
                not_types=event_filter.not_types,
            )
        chunk = [s for s in batch if event_filter.allows(s.event.type, s.event.sender)]
        body: dict[str, Any] = {
            "start": from_token
            or pagination_token(start if start is not None else (batch[0].stream_id - 1 if batch else 0)),
            "chunk": await self._timeline(chunk, device_id, user_id, review),
        }
        if len(batch) == limit:
            last = batch[-1].stream_id
            body["end"] = pagination_token(last - 1 if backwards else last)
        if lazy_load_members and chunk:
            senders = {s.event.sender for s in chunk}
            members = await self.events.get_current_state(room_id, [("m.room.member", u) for u in senders])
            body["state"] = await self._format(list(members.values()), None)
        return body

    async def get_event(self, user_id: str, room_id: str, event_id: str) -> dict[str, Any]:
        window = await self.visible_window(room_id, user_id)
        stored = await self.events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id or not self._in_window(stored, window):
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        return (await self._timeline([stored], None, user_id))[0]

    @staticmethod
    def _in_window(stored: StoredEvent, window: Window) -> bool:
        if stored.stream_id > window.upper:
            return False
        return window.lower is None or stored.stream_id >= window.lower or stored.event.is_state()

    async def context(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        event_id: str,
        limit: int,
        event_filter: EventFilter,
        lazy_load_members: bool = False,
        window: Window | None = None,
    ) -> dict[str, Any]:
        """The spec's /context: the filter applies to the events around and to `state`, the
        room's state at the last event returned (with lazy-loading, of the members only
        those who sent the events returned). `window`: as for `messages`."""
        review = window is not None
        if window is None:
            window = await self.visible_window(room_id, user_id)
        stored = await self.events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id or not self._in_window(stored, window):
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        limit = max(0, min(limit, MAX_LIMIT))
        before_n = limit // 2
        after_n = limit - before_n
        lower = window.lower - 1 if window.lower is not None else None
        before = (
            await self.events.room_events(
                room_id,
                after=lower,
                upto=stored.stream_id - 1,
                limit=before_n,
                backwards=True,
                types=event_filter.types,
                not_types=event_filter.not_types,
            )
            if before_n
            else []
        )
        after = (
            await self.events.room_events(
                room_id,
                after=stored.stream_id,
                upto=window.upper,
                limit=after_n,
                backwards=False,
                types=event_filter.types,
                not_types=event_filter.not_types,
            )
            if after_n
            else []
        )
        start = pagination_token((before[-1].stream_id if before else stored.stream_id) - 1)
        end = pagination_token(after[-1].stream_id if after else stored.stream_id)
        last = after[-1].stream_id if after else stored.stream_id
        before = [s for s in before if event_filter.allows(s.event.type, s.event.sender)]
        after = [s for s in after if event_filter.allows(s.event.type, s.event.sender)]
        current = await self.events.get_current_state(room_id)
        if lazy_load_members:
            senders = {s.event.sender for s in (stored, *before, *after)}
            current = {k: v for k, v in current.items() if k[0] != "m.room.member" or k[1] in senders}
        state = await self._state_at(current, last)
        formatted = await self._timeline([stored, *before, *after], device_id, user_id, review)
        return {
            "event": formatted[0],
            "events_before": formatted[1 : 1 + len(before)],
            "events_after": formatted[1 + len(before) :],
            "start": start,
            "end": end,
            "state": await self._format(
                [s for s in state.values() if event_filter.allows(s.event.type, s.event.sender)], None
            ),
        }

    async def _visible_state(self, user_id: str, room_id: str) -> dict[tuple[str, str], StoredEvent]:
        """The room state a user may see: current for members, as it was when they left otherwise."""
        window = await self.visible_window(room_id, user_id)
        current = await self.events.get_current_state(room_id)
        if window.upper >= self.db.current_stream_id:
            return current
        return await self._state_at(current, window.upper)

    async def _state_at(
        self, current: dict[tuple[str, str], StoredEvent], position: int
    ) -> dict[tuple[str, str], StoredEvent]:
        # Walk each entry changed after `position` back through the events it replaced.
        out: dict[tuple[str, str], StoredEvent] = {}
        for key, stored in current.items():
            item: StoredEvent | None = stored
            while item is not None and item.stream_id > position:
                replaced = item.unsigned.get("replaces_state")
                item = await self.events.get_event(replaced) if isinstance(replaced, str) else None
            if item is not None:
                out[key] = item
        return out

    async def room_state(self, user_id: str, room_id: str) -> list[dict[str, Any]]:
        state = await self._visible_state(user_id, room_id)
        return await self._format(list(state.values()), None)

    async def state_event(self, user_id: str, room_id: str, type_: str, state_key: str) -> StoredEvent:
        stored = (await self._visible_state(user_id, room_id)).get((type_, state_key))
        if stored is None:
            raise MatrixError(404, Codes.NOT_FOUND, "State event not found")
        return stored

    async def members(
        self, user_id: str, room_id: str, membership: str | None, not_membership: str | None
    ) -> list[dict[str, Any]]:
        state = await self._visible_state(user_id, room_id)
        out = []
        for key, s in state.items():
            if key[0] != "m.room.member":
                continue
            m = s.event.membership
            if membership and m != membership:
                continue
            if not_membership and m == not_membership:
                continue
            out.append(s)
        return await self._format(out, None)
