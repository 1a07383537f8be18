"""The /sync extension for the Client-Server modules: unread notification counts (per room
and per thread), m.push_rules account data, presence, bundled relations and knocked rooms.

It post-processes the response the core SyncHandler built. Rooms whose counts changed
without any other activity (a new notification computed after the event was synced)
are added with an empty timeline, so counts never go stale.

The request's filter and `set_presence` come from the core handler's `SYNC_CONTEXT`
(no filter and no presence change when there is none).
"""

from __future__ import annotations

from typing import Any, Protocol

from homeserver.handlers.auth import Requester
from homeserver.handlers.client_format import membership_preview
from homeserver.storage.events import EventStore
from homeserver.storage.unread import Counts
from homeserver.sync.filter import EventFilter, SyncFilter, matches_type
from homeserver.sync.filter_cache import NO_FILTER
from homeserver.sync.shared import SYNC_CONTEXT, SyncContext


class PushCounts(Protocol):
    async def unread_counts(self, user_id: str, room_ids: list[str]) -> dict[str, dict[str, Counts]]: ...


class PushRulesSource(Protocol):
    async def ruleset_json(self, user_id: str) -> dict[str, Any]: ...
    async def rules_changed_since(self, user_id: str, since: int) -> bool: ...
    async def count_changes_since(self, user_id: str, since: int, upto: int) -> set[str]: ...


class SyncPart(Protocol):
    """Further sections (presence, relations, knocks) plug in through this."""

    async def sync_part(
        self,
        requester: Requester,
        since: int | None,
        upto: int,
        joined: list[str],
        filter_json: dict[str, Any],
        response: dict[str, Any],
    ) -> None: ...


class Bundler(Protocol):
    async def bundle(self, formatted: list[dict[str, Any]], user_id: str) -> None: ...


class RelationBundles:
    """Adds bundled aggregations (edits, threads, references, reactions) to timeline events."""

    def __init__(self, bundler: Bundler) -> None:
        self.bundler = bundler

    async def sync_part(
        self,
        requester: Requester,
        since: int | None,
        upto: int,
        joined: list[str],
        filter_json: dict[str, Any],
        response: dict[str, Any],
    ) -> None:
        timeline: list[dict[str, Any]] = []
        for section in ("join", "leave"):
            for room in response["rooms"].get(section, {}).values():
                timeline.extend(room.get("timeline", {}).get("events", []))
        if not timeline:
            return
        ctx = _context(since, upto)
        if ctx is not None:
            # Most events have no relations: bundle only those that do. The timeline reads
            # said which do; any other event is asked about in one shared query.
            ids = [e["event_id"] for e in timeline if isinstance(e.get("event_id"), str)]
            unknown = tuple(i for i in ids if i not in ctx.relations_known)
            related: set[str] | frozenset[str] = ctx.related
            if unknown:
                found = await ctx.memo.get(
                    upto, ("related", unknown), lambda: ctx.reads.with_relations(unknown)
                )
                related = ctx.related | found
            timeline = [e for e in timeline if e.get("event_id") in related]
            if not timeline:
                return
        await self.bundler.bundle(timeline, requester.user_id)


class PresenceSource(Protocol):
    async def user_syncing(self, user_id: str, set_presence: str | None) -> None: ...
    async def sync_events(
        self, user_id: str, joined: list[str], since: int | None, upto: int
    ) -> list[dict[str, Any]]: ...


class PresenceSection:
    """Marks the user as syncing (online) and delivers room peers' presence changes."""

    def __init__(self, presence: PresenceSource) -> None:
        self.presence = presence

    async def sync_part(
        self,
        requester: Requester,
        since: int | None,
        upto: int,
        joined: list[str],
        filter_json: dict[str, Any],
        response: dict[str, Any],
    ) -> None:
        ctx = SYNC_CONTEXT.get()
        await self.presence.user_syncing(requester.user_id, ctx.set_presence if ctx else None)
        presence_filter = EventFilter.parse(filter_json.get("presence"))
        if not presence_filter.allows("m.presence", requester.user_id) and presence_filter.not_types:
            return
        if not matches_type(presence_filter, "m.presence"):
            return  # the filter drops every presence event
        events = await self.presence.sync_events(requester.user_id, joined, since, upto)
        events = [e for e in events if presence_filter.allows(e["type"], e["sender"])]
        if events:
            response.setdefault("presence", {})["events"] = events


class KnockSection:
    """rooms.knock: rooms the user has knocked on, with their stripped state."""

    def __init__(self, events: EventStore) -> None:
        self.events = events

    async def sync_part(
        self,
        requester: Requester,
        since: int | None,
        upto: int,
        joined: list[str],
        filter_json: dict[str, Any],
        response: dict[str, Any],
    ) -> None:
        ctx = _context(since, upto)
        if ctx is not None:
            memberships = ctx.memberships
        else:
            memberships = await self.events.get_memberships_for_user(requester.user_id)
        knocks = [
            (room_id, event_id)
            for room_id, membership, event_id, stream in memberships
            if membership == "knock" and stream <= upto and (since is None or stream > since)
        ]
        if not knocks:
            return
        section = response["rooms"].setdefault("knock", {})
        for room_id, event_id in knocks:
            stripped = await membership_preview(self.events, room_id, event_id, "knock_room_state")
            section[room_id] = {"knock_state": {"events": stripped}}


def _context(since: int | None, upto: int) -> SyncContext | None:
    """The core handler's context for this very sync, if there is one."""
    ctx = SYNC_CONTEXT.get()
    return ctx if ctx is not None and ctx.since == since and ctx.upto == upto else None


def empty_room() -> dict[str, Any]:
    return {
        "timeline": {"events": [], "limited": False},
        "state": {"events": []},
        "ephemeral": {"events": []},
        "account_data": {"events": []},
    }


class ClientServerSyncExtension:
    def __init__(
        self,
        push: PushCounts,
        rules: PushRulesSource,
        parts: list[SyncPart] | None = None,
    ) -> None:
        self.push = push
        self.rules = rules
        self.parts = parts or []

    async def sync_fields(
        self,
        requester: Requester,
        since: int | None,
        upto: int,
        joined_room_ids: list[str],
        response: dict[str, Any],
    ) -> None:
        user_id = requester.user_id
        ctx = SYNC_CONTEXT.get()
        filter_json, room_filter = (ctx.filter_json, ctx.filter) if ctx else NO_FILTER
        await self._push_rules(user_id, since, upto, response)
        await self._unread(user_id, since, upto, joined_room_ids, filter_json, room_filter, response)
        for part in self.parts:
            await part.sync_part(requester, since, upto, joined_room_ids, filter_json, response)

    async def _push_rules(self, user_id: str, since: int | None, upto: int, response: dict[str, Any]) -> None:
        if since is not None:
            ctx = _context(since, upto)
            if ctx is not None and ctx.probe is not None:
                changed = (ctx.probe.push_rules or 0) > since
            else:
                changed = await self.rules.rules_changed_since(user_id, since)
            if not changed:
                return
        events = response.setdefault("account_data", {}).setdefault("events", [])
        events[:] = [e for e in events if e.get("type") != "m.push_rules"]
        events.append({"type": "m.push_rules", "content": await self.rules.ruleset_json(user_id)})

    async def _unread(
        self,
        user_id: str,
        since: int | None,
        upto: int,
        joined: list[str],
        filter_json: dict[str, Any],
        room_filter: SyncFilter,
        response: dict[str, Any],
    ) -> None:
        rooms_join: dict[str, Any] = response["rooms"]["join"]
        wanted = set(rooms_join)
        ctx = _context(since, upto)
        if since is not None:
            changed: set[str]
            if ctx is not None and ctx.probe is not None:
                changed = ctx.probe.push_action_rooms
            else:
                changed = await self.rules.count_changes_since(user_id, since, upto)
            if changed:
                joined_set = set(joined)
                wanted |= {r for r in changed if r in joined_set and room_filter.allows_room(r)}
        if not wanted:
            return
        timeline = filter_json.get("room", {}).get("timeline", {}) if isinstance(filter_json, dict) else {}
        thread_aware = isinstance(timeline, dict) and timeline.get("unread_thread_notifications") is True
        if ctx is not None:
            # Counted up to the sync's position, adding to counts kept from the last sync.
            counts = await ctx.reads.unread.at(user_id, sorted(wanted), upto)
        else:
            counts = await self.push.unread_counts(user_id, sorted(wanted))
        for room_id in wanted:
            room = rooms_join.setdefault(room_id, empty_room())
            per_thread = counts.get(room_id, {})
            if thread_aware:
                room["unread_notifications"] = per_thread.get("main", Counts()).to_json()
                room["unread_thread_notifications"] = {
                    tid: c.to_json() for tid, c in per_thread.items() if tid != "main" and c.notifications
                }
            else:
                total = Counts(
                    sum(c.notifications for c in per_thread.values()),
                    sum(c.highlights for c in per_thread.values()),
                )
                room["unread_notifications"] = total.to_json()
