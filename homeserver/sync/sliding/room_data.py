"""One room's part of a sliding sync response.

The first time a connection gets a room (or after the user's membership changed), the
room is sent whole (`initial`): its latest `timeline_limit` events and the state its
`required_state` asks for. After that, only what changed since it was last sent: new
events, state that changed, counts that changed. A raised `timeline_limit` re-sends the
latest events (`unstable_expanded_timeline`), and a wider `required_state` sends the state
it newly matches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from homeserver.clock import Clock
from homeserver.handlers.client_format import format_events, membership_preview
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.sync_reads import SyncQueries
from homeserver.sync.handler import SyncHandler
from homeserver.sync.sliding.config import MEMBER, RequiredState, RoomConfig
from homeserver.sync.sliding.connections import RoomSent
from homeserver.sync.sliding.rooms import Entry
from homeserver.sync.tokens import pagination_token

StateKey = tuple[str, str]
Bundler = Callable[[list[dict[str, Any]], str], Awaitable[None]]
NAME = ("m.room.name", "")
AVATAR = ("m.room.avatar", "")


@dataclass(slots=True)
class RoomContext:
    """What one room's result needs besides the room itself."""

    user_id: str
    device_id: str | None
    # The connection's previous position (None on its first request), and this one.
    since: int | None
    upto: int
    counts: tuple[int, int]
    is_dm: bool
    lists: list[str]
    # No event landed in the room since the connection last got it.
    quiet: bool = False


class RoomData:
    def __init__(
        self, events: EventStore, reads: SyncQueries, sync: SyncHandler, clock: Clock, bundler: Bundler | None
    ) -> None:
        self.events = events
        self.reads = reads
        self.sync = sync
        self.clock = clock
        self.bundler = bundler

    async def build(
        self, entry: Entry, config: RoomConfig, sent: RoomSent | None, ctx: RoomContext
    ) -> tuple[dict[str, Any] | None, RoomSent]:
        """The room's result (None: nothing new) and what the connection then holds of it."""
        initial = sent is None or sent.membership != entry.membership
        common: dict[str, Any] = {"membership": entry.membership, "bump_stamp": entry.bump}
        if ctx.lists:
            common["lists"] = ctx.lists
        if entry.membership in ("invite", "knock"):
            held = RoomSent(ctx.upto, entry.membership, config)
            if not initial:
                return None, held
            key = "invite_room_state" if entry.membership == "invite" else "knock_room_state"
            preview = await membership_preview(self.events, entry.room_id, entry.event_id, key)
            name = next((e["content"].get("name") for e in preview if e["type"] == "m.room.name"), None)
            result = {**common, "initial": True, "invite_state": preview}
            if isinstance(name, str):
                result["name"] = name
            return result, held
        return await self._member_room(entry, config, None if initial else sent, ctx)

    async def _member_room(
        self, entry: Entry, config: RoomConfig, sent: RoomSent | None, ctx: RoomContext
    ) -> tuple[dict[str, Any] | None, RoomSent]:
        room_id, user_id = entry.room_id, ctx.user_id
        # A room the user left or was removed from is seen up to that moment.
        room_upto = ctx.upto if entry.membership == "join" else min(entry.stream, ctx.upto)
        limit = config.timeline_limit
        expanded = sent is not None and limit > sent.config.timeline_limit
        after = None if sent is None or expanded else sent.stream
        timeline: list[StoredEvent] = []
        related: frozenset[str] = frozenset()
        limited = False
        if limit > 0 and (after is None or (after < room_upto and not ctx.quiet)):
            read = await self.reads.room_events(
                room_id, after=after, upto=room_upto, limit=limit + 1, types=None, not_types=None
            )
            limited = len(read.events) > limit
            timeline = list(reversed(read.events[:limit]))
            related = read.related
        if expanded and sent is not None and not any(s.stream_id > sent.stream for s in timeline):
            # Nothing new and nothing more to show than the client holds.
            expanded = len(timeline) > sent.config.timeline_limit
        rs = config.required_state
        old_rs = sent.config.required_state if sent is not None else None
        # Without a gap, the timeline holds every event since the room was sent: state can
        # have changed only if some of them are state events.
        settled = ctx.quiet or (limit > 0 and not limited and not any(s.event.is_state() for s in timeline))
        state = await self._state(room_id, rs, old_rs, sent, room_upto, user_id, settled)
        members_sent = sent.members if sent is not None else frozenset()
        lazy: list[StoredEvent] = []
        if rs.lazy_members:
            lazy = await self._lazy_members(room_id, timeline, state, members_sent, user_id, room_upto)
        state_all = state + lazy
        changed = {s.event.state_key_tuple for s in state_all} | {
            s.event.state_key_tuple for s in timeline if s.event.is_state()
        }
        counts_changed = sent is None or sent.counts != ctx.counts
        held = RoomSent(
            room_upto,
            entry.membership,
            config,
            members_sent | {s.event.state_key or "" for s in lazy},
            ctx.counts,
        )
        if sent is None:
            new_events = True
        elif limit > 0:
            new_events = any(s.stream_id > sent.stream for s in timeline)
        else:
            # No timeline asked for: the room still moves when something happens in it.
            new_events = not ctx.quiet and bool(
                await self.events.rooms_with_events_between([room_id], sent.stream, room_upto)
            )
        if not (new_events or state_all or counts_changed or expanded):
            return None, held
        now = self.clock.time_ms()
        result: dict[str, Any] = {
            "membership": entry.membership,
            "notification_count": ctx.counts[0],
            "highlight_count": ctx.counts[1],
        }
        if ctx.lists:
            result["lists"] = ctx.lists
        if sent is None or new_events:
            result["bump_stamp"] = entry.bump
        if sent is None:
            result["initial"] = True
        if expanded:
            result["unstable_expanded_timeline"] = True
        if ctx.is_dm:
            result["is_dm"] = True
        if timeline or sent is None:
            # Erased users' events pruned for this user (handlers/erasure.py).
            shown = await self.sync.erasure.for_client(user_id, timeline)
            formatted = await format_events(
                self.events, shown, now, device_id=ctx.device_id, include_room_id=False
            )
            # Only the events the read found relations for have anything to bundle.
            bundled = [e for e in formatted if e["event_id"] in related]
            if bundled and self.bundler is not None:
                await self.bundler(bundled, user_id)
            result["timeline"] = formatted
            result["limited"] = limited
            prev = (timeline[0].stream_id - 1) if timeline else room_upto
            result["prev_batch"] = pagination_token(prev)
            since = ctx.since
            result["num_live"] = 0 if since is None else sum(1 for s in timeline if s.stream_id > since)
        if state_all:
            result["required_state"] = await format_events(self.events, state_all, now, include_room_id=False)
        await self._names(room_id, sent is None, changed, result, user_id, room_upto)
        if sent is None or any(k[0] == MEMBER for k in changed):
            summary = await self.sync.room_summary(room_id, user_id, ctx.upto)
            result["joined_count"] = summary["m.joined_member_count"]
            result["invited_count"] = summary["m.invited_member_count"]
            if "name" not in result and sent is None:
                result["heroes"] = await self._heroes(room_id, summary["m.heroes"])
        return result, held

    async def _state(
        self,
        room_id: str,
        rs: RequiredState,
        old_rs: RequiredState | None,
        sent: RoomSent | None,
        room_upto: int,
        user_id: str,
        settled: bool,
    ) -> list[StoredEvent]:
        """The state to send: all that `rs` matches (first time), else what changed since the
        room was sent, plus what a widened `rs` newly matches."""
        if not rs.pairs:
            return []
        if sent is None:
            current = await self._current(room_id, rs, user_id)
            return [s for k, s in current.items() if rs.matches(k, user_id) and s.stream_id <= room_upto]
        out: list[StoredEvent] = []
        if sent.stream < room_upto and not settled:
            out = [
                s
                for s in await self.events.get_state_changed_since(room_id, sent.stream, room_upto)
                if rs.matches(s.event.state_key_tuple, user_id)
            ]
        if old_rs is not None and rs != old_rs:
            have = {s.event.event_id for s in out}
            current = await self._current(room_id, rs, user_id)
            out += [
                s
                for k, s in current.items()
                if rs.matches(k, user_id)
                and not old_rs.matches(k, user_id)
                and s.stream_id <= room_upto
                and s.event.event_id not in have
            ]
        return out

    async def _current(self, room_id: str, rs: RequiredState, user_id: str) -> dict[StateKey, StoredEvent]:
        if rs.needs_full_state():
            return await self.events.get_current_state(room_id)
        return await self.events.get_current_state(room_id, rs.keys(user_id))

    async def _lazy_members(
        self,
        room_id: str,
        timeline: list[StoredEvent],
        state: list[StoredEvent],
        held: frozenset[str],
        user_id: str,
        room_upto: int,
    ) -> list[StoredEvent]:
        """Member events of the timeline's senders (and the user) the client does not hold."""
        have = held | {s.event.state_key or "" for s in state if s.event.type == MEMBER}
        wanted = ({s.event.sender for s in timeline} | {user_id}) - have
        if not wanted:
            return []
        found = await self.events.get_current_state(room_id, [(MEMBER, u) for u in sorted(wanted)])
        return [s for s in found.values() if s.stream_id <= room_upto]

    async def _names(
        self,
        room_id: str,
        initial: bool,
        changed: set[StateKey],
        result: dict[str, Any],
        user_id: str,
        room_upto: int,
    ) -> None:
        """`name` and `avatar`: sent the first time, and when they change (null if removed)."""
        keys = [k for k in (NAME, AVATAR) if initial or k in changed]
        if not keys:
            return
        state = await self.events.get_current_state(room_id, keys)
        for key, field, content_key in ((NAME, "name", "name"), (AVATAR, "avatar", "url")):
            if key not in keys:
                continue
            stored = state.get(key)
            value = stored.event.content.get(content_key) if stored is not None else None
            if (
                not isinstance(value, str)
                or not value
                or (stored is not None and stored.stream_id > room_upto)
            ):
                value = None
            if value is not None or not initial:
                result[field] = value

    async def _heroes(self, room_id: str, heroes: list[str]) -> list[dict[str, Any]]:
        found = await self.events.get_current_state(room_id, [(MEMBER, h) for h in heroes])
        out = []
        for user in heroes:
            hero: dict[str, Any] = {"user_id": user}
            stored = found.get((MEMBER, user))
            if stored is not None:
                for src, dst in (("displayname", "displayname"), ("avatar_url", "avatar_url")):
                    value = stored.event.content.get(src)
                    if isinstance(value, str):
                        hero[dst] = value
            out.append(hero)
        return out
