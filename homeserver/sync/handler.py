"""/sync v3: initial and incremental syncs, long-polling on the notifier.

A sync reads everything up to one stream position `upto` (captured at the
start, always a fully committed position) and returns `s{upto}_{ephemeral}`
as next_batch, so consecutive syncs neither miss nor repeat rows.

A sync is `begin`, then `attempt` until one answers; between attempts its caller waits on
the notifier, in its own task (`wait_for`) or, detached from HTTP, on a watch's callback
(homeserver.api.sync).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from homeserver.clock import Clock
from homeserver.handlers.auth import Requester
from homeserver.handlers.client_format import format_events, membership_preview
from homeserver.handlers.ephemeral import ReceiptHandler, TypingHandler, receipts_to_edu_content
from homeserver.handlers.erasure import ErasureFilter
from homeserver.handlers.invite_permission import InvitePermission
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.engine import Database
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.join_history import joined_at
from homeserver.storage.sync_reads import SyncQueries
from homeserver.sync.filter import SyncFilter
from homeserver.sync.notifier import Notifier
from homeserver.sync.sent_members import SentMembers
from homeserver.sync.shared import SYNC_CONTEXT, ReadMemo, SyncContext
from homeserver.sync.sticky import StickySection
from homeserver.sync.tokens import SyncToken, pagination_token

StateKey = tuple[str, str]
MEMBER = "m.room.member"
# Users whose last sync's position and rooms are kept (all are dropped when full).
MAX_LAST_SYNCS = 100_000


class SyncExtension(Protocol):
    async def sync_fields(
        self,
        requester: Requester,
        since: int | None,
        upto: int,
        joined_room_ids: list[str],
        response: dict[str, Any],
    ) -> None: ...


@dataclass(slots=True)
class SyncRequest:
    requester: Requester
    since: SyncToken | None
    filter: SyncFilter
    full_state: bool
    timeout_ms: int
    # The filter as JSON (shared between requests: read-only), for the extensions.
    filter_json: dict[str, Any] = field(default_factory=dict)
    set_presence: str | None = None
    # `use_state_after` (MSC4222, spec v1.16): the key that then carries the state at the
    # end of the timeline instead of `state` ("state_after", or the unstable name).
    state_after: str | None = None


class SyncHandler:
    def __init__(
        self,
        db: Database,
        events: EventStore,
        account_data: AccountDataStore,
        typing: TypingHandler,
        receipts: ReceiptHandler,
        notifier: Notifier,
        clock: Clock,
        extensions: list[SyncExtension],
        erasure: ErasureFilter,
    ) -> None:
        self.db = db
        self.events = events
        self.account_data = account_data
        self.typing = typing
        self.receipts = receipts
        self.notifier = notifier
        self.clock = clock
        self.extensions = extensions
        # Erased users' events are pruned for this user, after the shared reads.
        self.erasure = erasure
        self.reads = SyncQueries(db, events)
        self.invite_permission = InvitePermission(account_data)
        # Room-level reads shared by the syncs computed at the same stream position.
        self.memo = ReadMemo()
        # user_id -> (position, joined rooms) of the user's last sync computed: a long-poll
        # that comes back with that position while nothing new exists parks at once.
        self._last: dict[str, tuple[int, list[str]]] = {}
        # Member events each device holds (lazy-loading leaves out redundant ones).
        self.sent_members = SentMembers()
        # Called for every sync that parks without a computation (presence: the user syncs).
        self.park_hooks: list[Callable[[str, str | None], Awaitable[None]]] = []
        # The sticky events section (MSC4354), when sticky events are on.
        self.sticky: StickySection | None = None

    async def wait_for(self, req: SyncRequest, deadline: float, rooms: list[str]) -> dict[str, Any]:
        """The rest of a sync whose `attempt` said to wait on `rooms`, waiting in this task."""
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            timed_out = not await self.notifier.wait(req.requester.user_id, rooms, remaining)
            # Woken: compute the new data (a wake for someone else yields an empty pass).
            await asyncio.sleep(0)
            outcome = await self.attempt(req, deadline, timed_out)
            if not isinstance(outcome, list):
                return outcome
            rooms = outcome

    async def begin(self, req: SyncRequest) -> float:
        """Before the first `attempt`: the long-poll's deadline (monotonic clock)."""
        deadline = time.monotonic() + req.timeout_ms / 1000
        if req.since is not None:
            # The token may come from another worker that is ahead of this one.
            await self.db.catch_up(req.since.stream)
        return deadline

    async def attempt(self, req: SyncRequest, deadline: float, timed_out: bool) -> dict[str, Any] | list[str]:
        """One pass of a sync: its response, or (a long-poll with nothing to say yet) the
        rooms to wait on with `Notifier` until `deadline`. `timed_out`: the wait ended
        without a wake, so answer whatever there is. Registering the wait right after this
        returns, with no await in between, misses no wake."""
        while True:
            upto = self.db.current_stream_id
            eph = self.notifier.ephemeral_serial
            # A long-poll coming back with nothing new parks without computing (no response
            # and no statement): its first pass would find nothing.
            joined = None if timed_out else await self._park_without_computing(req)
            if joined is not None:
                return joined
            response, joined = await self._compute(req, upto, eph)
            if response.pop("_to_device_limited", False):
                # More to-device messages are queued than one sync carries: answer with a
                # token no later than the last one delivered, so the rest come next time.
                capped = int(response.pop("_to_device_upto"))
                response, joined = await self._compute(req, min(capped, upto), eph)
                response.pop("_to_device_limited", None)
                response.pop("_to_device_upto", None)
                return response
            if (
                timed_out
                or req.since is None
                or req.full_state
                or deadline <= time.monotonic()
                or self.notifier.closing
                or not _is_empty(response)
            ):
                return response
            # Something may have landed while we computed: recompute rather than sleep.
            if self.db.current_stream_id != upto or self.notifier.ephemeral_serial != eph:
                continue
            # Parked long-polls are most of a busy server's memory: hold no response while
            # waiting; the answer on timeout is computed afresh (and is then up to date).
            # Measured at 5,000 parked syncs: keeping it, even encoded to bytes, costs ~4 KiB
            # more RSS per sync (its allocation pins the compute's freed memory); recomputing
            # costs one empty incremental sync (~0.4 ms CPU) per timeout.
            return joined

    async def _park_without_computing(self, req: SyncRequest) -> list[str] | None:
        """The rooms to wait on if this pass would compute an empty response (see
        `_nothing_new`), after telling the park hooks (presence) that the user syncs."""
        if self._nothing_new(req) is None:
            return None
        for hook in self.park_hooks:
            await hook(req.requester.user_id, req.set_presence)
        # The hooks may have awaited: check again. The caller registers its waiter with no
        # await after this check, so no wake is missed.
        return self._nothing_new(req)

    def _nothing_new(self, req: SyncRequest) -> list[str] | None:
        """The rooms to wait on, when this long-poll's window is empty and its user's last
        sync was computed at this very position (so their memberships are the same: any
        change since would have a newer position); else None."""
        since = req.since
        if since is None or req.full_state or req.timeout_ms <= 0 or self.notifier.closing:
            return None
        if since.sticky is not None:
            return None  # sticky events are still to be delivered
        upto = self.db.current_stream_id
        if since.stream != upto or since.ephemeral != self.notifier.ephemeral_serial:
            return None
        last = self._last.get(req.requester.user_id)
        return last[1] if last is not None and last[0] == upto else None

    async def _compute(self, req: SyncRequest, upto: int, eph: int) -> tuple[dict[str, Any], list[str]]:
        ctx = SYNC_CONTEXT.set(None)
        try:
            response, joined = await self._compute_in_context(req, upto, eph)
        finally:
            SYNC_CONTEXT.reset(ctx)
        if len(self._last) >= MAX_LAST_SYNCS:
            self._last.clear()
        self._last[req.requester.user_id] = (upto, joined)
        return response, joined

    async def _compute_in_context(
        self, req: SyncRequest, upto: int, eph: int
    ) -> tuple[dict[str, Any], list[str]]:
        user_id = req.requester.user_id
        since = req.since
        since_stream = since.stream if since else None
        memo = self.memo
        if since is None:
            self.sent_members.forget(user_id, req.requester.device_id)
        memberships, probe = await self.reads.memberships_and_probe(
            user_id, req.requester.device_id, since_stream, upto
        )
        window = None
        if since_stream is not None:
            # One statement, shared by every sync of this window, instead of one per section
            # (none for an empty window).
            window = await memo.get(
                upto, ("window", since_stream), lambda: self.reads.window_summary(since_stream, upto)
            )
        SYNC_CONTEXT.set(
            SyncContext(
                self.reads,
                memo,
                since_stream,
                upto,
                memberships,
                probe,
                req.filter_json,
                req.filter,
                req.set_presence,
                window,
            )
        )
        joined = [(r, s) for r, m, _, s in memberships if m == "join" and req.filter.allows_room(r)]
        # Rooms joined since the token: the user's member event moved past it and they were
        # not joined then (a new display name moves it too, and is not a join).
        newly: set[str] = set()
        if since is not None:
            moved = {r: e for r, m, e, s in memberships if m == "join" and s > since.stream}
            if moved:
                newly = set(moved) - await joined_at(self.db, moved, since.stream)
        joined_ids = [r for r, _ in joined]
        all_joined = [r for r, m, _, _ in memberships if m == "join"]
        joined_key = tuple(joined_ids)

        rooms_join: dict[str, Any] = {}
        changed_rooms: set[str] | None = None
        if since_stream is not None and not req.full_state:
            since_pos = since_stream
            if window is not None:
                changed_rooms = window.event_rooms.intersection(joined_ids)
            else:
                changed_rooms = await memo.get(
                    upto,
                    ("changed", joined_key, since_pos),
                    lambda: self.reads.rooms_with_events_between(joined_ids, since_pos, upto),
                )
        receipt_rooms = joined_ids if window is None else [r for r in joined_ids if r in window.receipt_rooms]
        receipt_key = tuple(receipt_rooms)
        receipts = (
            []
            if not receipt_rooms
            else await memo.get(
                upto,
                ("receipts", receipt_key, since_stream),
                lambda: self.receipts.store.get_since(receipt_rooms, since_stream, upto),
            )
        )
        receipts_by_room: dict[str, list[Any]] = {}
        for r in receipts:
            receipts_by_room.setdefault(r.room_id, []).append(r)
        if req.full_state and since_stream is not None:
            # full_state: all of it, as an initial sync has it.
            glob_ad, room_ad = await self.account_data.get_since(user_id, None, upto)
        elif probe is not None and probe.account_data is None:
            # Nothing of the user's account data changed in (since, upto].
            glob_ad = {}
            room_ad = {}
        else:
            glob_ad, room_ad = await self.account_data.get_since(user_id, since_stream, upto)

        for room_id, _ in joined:
            newly_joined = room_id in newly
            full = since is None or req.full_state or newly_joined
            room: dict[str, Any] = {}
            if full or (changed_rooms is not None and room_id in changed_rooms):
                # full_state resends the state, but the timeline still starts at `since`
                # (unless the user joined since then).
                after = None if since is None or newly_joined else since.stream
                room = await self._room_timeline(req, room_id, after, upto, full, upto)
            ephemeral: list[dict[str, Any]] = []
            if full or (since is not None and self.typing.changed_since(room_id, since.ephemeral)):
                ephemeral.append(
                    {"type": "m.typing", "content": {"user_ids": self.typing.typing_users(room_id)}}
                )
            if receipts_by_room.get(room_id):
                content = receipts_to_edu_content(receipts_by_room[room_id], user_id)
                if content:
                    ephemeral.append({"type": "m.receipt", "content": content})
            if ephemeral:
                room["ephemeral"] = {"events": ephemeral}
            if newly_joined and not req.full_state:
                # The room's account data (its tags, say) may predate the join, as the
                # server notices room's tag does: a newly joined room gets all of it.
                room_ad[room_id] = await self.account_data.for_room(user_id, room_id)
            if room_ad.get(room_id):
                room["account_data"] = {
                    "events": [{"type": t, "content": c} for t, c in room_ad[room_id].items()]
                }
            if room:
                room.setdefault("timeline", {"events": [], "limited": False})
                room.setdefault(req.state_after or "state", {"events": []})
                room.setdefault("ephemeral", {"events": []})
                room.setdefault("account_data", {"events": []})
                rooms_join[room_id] = room

        rooms_invite: dict[str, Any] = {}
        rooms_leave: dict[str, Any] = {}
        forgotten: set[str] | None = None
        blocks_invites: bool | None = None
        for room_id, membership, event_id, stream in memberships:
            if not req.filter.allows_room(room_id):
                continue
            is_new = since is None or stream > since.stream
            if membership == "invite" and is_new and blocks_invites is None:
                # Read only when there is an invite to send (spec v1.18 invite permission).
                blocks_invites = await self.invite_permission.blocks_invites(user_id)
            if membership == "invite" and is_new and not blocks_invites:
                rooms_invite[room_id] = {
                    "invite_state": {
                        "events": await membership_preview(
                            self.events, room_id, event_id, "invite_room_state"
                        )
                    }
                }
            elif membership in ("leave", "ban"):
                if (since is None and req.filter.include_leave) or (since is not None and is_new):
                    if forgotten is None:
                        forgotten = await self.reads.forgotten_rooms(user_id)
                    if room_id not in forgotten:
                        rooms_leave[room_id] = await self._left_room(req, room_id, since, stream, upto)

        sticky_upto = None
        if self.sticky is not None:
            state_key = req.state_after or "state"

            def new_room() -> dict[str, Any]:
                return {
                    "timeline": {"events": [], "limited": False},
                    state_key: {"events": []},
                    "ephemeral": {"events": []},
                    "account_data": {"events": []},
                }

            sticky_rooms: Set[str] | None = None
            if window is not None:
                sticky_rooms = window.sticky_rooms
            elif since_stream is not None:
                # Read once per window (the store remembers it), as the window summary is.
                sticky_rooms = await self.sticky.store.rooms_in_window(since_stream, upto)
            sticky_upto = await self.sticky.add(
                rooms_join,
                since,
                upto,
                [r for r, _ in joined],
                newly,
                sticky_rooms,
                new_room,
                req.requester.device_id,
            )
        response: dict[str, Any] = {
            "next_batch": str(SyncToken(upto, eph, sticky_upto)),
            "rooms": {"join": rooms_join, "invite": rooms_invite, "leave": rooms_leave, "knock": {}},
            "account_data": {"events": [{"type": t, "content": c} for t, c in glob_ad.items()]},
            "presence": {"events": []},
        }
        for ext in self.extensions:
            await ext.sync_fields(req.requester, since_stream, upto, all_joined, response)
        return response, all_joined

    async def _room_timeline(
        self, req: SyncRequest, room_id: str, after: int | None, upto: int, full: bool, window: int
    ) -> dict[str, Any]:
        """The room's timeline in (after, upto]; `window` is the position the sync reads up to
        (its reads are shared with the other syncs at that position)."""
        f = req.filter
        limit = f.timeline_limit
        types = tuple(f.timeline.types) if f.timeline.types else None
        not_types = tuple(f.timeline.not_types) if f.timeline.not_types else None
        read = await self.memo.get(
            window,
            ("timeline", room_id, after, upto, limit + 1, types, not_types),
            lambda: self.reads.room_events(
                room_id, after=after, upto=upto, limit=limit + 1, types=types, not_types=not_types
            ),
        )
        batch = read.events
        limited = len(batch) > limit
        timeline = list(reversed(batch[:limit]))
        timeline = [s for s in timeline if f.timeline.allows(s.event.type, s.event.sender)]
        timeline_ids = {s.event.event_id for s in timeline}
        ctx = SYNC_CONTEXT.get()
        if ctx is not None:
            # The relations section learns these events' relations from the read.
            ctx.relations_known.update(timeline_ids)
            ctx.related.update(read.related)
        state: list[StoredEvent]
        senders = {s.event.sender for s in timeline} | {req.requester.user_id}
        # With state_after, the state runs to the end of the timeline, its own changes
        # included (clients then take the timeline's state events as history only).
        after_timeline = req.state_after is not None
        if full:
            state = await self._state_at_timeline_start(
                room_id, timeline, window, senders if f.lazy_load_members else None, undo=not after_timeline
            )
        elif limited or (after_timeline and any(s.event.is_state() for s in timeline)):
            state = [
                s
                for s in await self.memo.get(
                    window,
                    ("state_changed", room_id, after or 0, upto),
                    lambda: self.events.get_state_changed_since(room_id, after or 0, upto),
                )
                if after_timeline or s.event.event_id not in timeline_ids
            ]
        else:
            state = []
        if f.lazy_load_members:
            state = [s for s in state if s.event.type != "m.room.member" or s.event.state_key in senders]
            have = {s.event.state_key for s in state if s.event.type == "m.room.member"}
            have |= {s.event.state_key for s in timeline if s.event.type == "m.room.member"}
            missing = [("m.room.member", u) for u in senders - have if u is not None]
            if missing and (full or limited or timeline):
                state.extend((await self.events.get_current_state(room_id, missing)).values())
        state = [s for s in state if f.state.allows(s.event.type, s.event.sender)]
        # Lazy-loading leaves out the member events this device already holds (redundant
        # ones) in an incremental sync, from its `since`; a room's full state is sent whole.
        user_id, device_id = req.requester.user_id, req.requester.device_id
        track = f.lazy_load_members and not f.include_redundant_members
        held_since = req.since.stream if track and req.since is not None and not full else None
        if held_since is not None:
            state = self.sent_members.not_held(user_id, device_id, held_since, state)
        summary = None
        if full or any(s.event.type == MEMBER for s in timeline + state):
            summary = await self.room_summary(room_id, user_id, window)
            if f.lazy_load_members:
                # The spec: the heroes' member events MUST be in `state` (unless redundant).
                heroes = await self._hero_members(room_id, summary["m.heroes"], state + timeline)
                heroes = [s for s in heroes if f.state.allows(s.event.type, s.event.sender)]
                if held_since is not None:
                    heroes = self.sent_members.not_held(user_id, device_id, held_since, heroes)
                state.extend(heroes)
        if track:
            self.sent_members.remember(user_id, device_id, state + timeline, window)
        now = self.clock.time_ms()
        prev = (timeline[0].stream_id - 1) if timeline else upto
        shown = await self.erasure.for_client(user_id, timeline)
        room: dict[str, Any] = {
            "timeline": {
                "events": await format_events(
                    self.events, shown, now, device_id=req.requester.device_id, include_room_id=False
                ),
                "limited": limited,
                "prev_batch": pagination_token(prev),
            },
            req.state_after or "state": {
                "events": await format_events(self.events, state, now, include_room_id=False)
            },
        }
        if summary is not None:
            room["summary"] = summary
        return room

    async def _hero_members(
        self, room_id: str, heroes: list[str], sent: list[StoredEvent]
    ) -> list[StoredEvent]:
        """The current member events of the heroes not among the events `sent`."""
        have = {s.event.state_key for s in sent if s.event.type == MEMBER}
        keys = [(MEMBER, h) for h in heroes if h not in have]
        return list((await self.events.get_current_state(room_id, keys)).values()) if keys else []

    async def _state_at_timeline_start(
        self,
        room_id: str,
        timeline: list[StoredEvent],
        window: int,
        members: set[str] | None = None,
        undo: bool = True,
    ) -> list[StoredEvent]:
        """The room's state before the timeline (after it, with `undo` false). With `members`
        (lazy-loading), only those users' member events are included: the others would be
        dropped anyway, and in a big room loading them all is most of an initial sync's work."""
        current: dict[StateKey, StoredEvent]
        if members is None:
            current = await self.events.get_current_state(room_id)
        else:
            current = dict(
                await self.memo.get(
                    window,
                    ("state_without_members", room_id),
                    lambda: self.reads.current_state_without_members(room_id),
                )
            )
            current.update(await self.events.get_current_state(room_id, [(MEMBER, u) for u in members]))
        state_ids: dict[StateKey, str] = {k: v.event.event_id for k, v in current.items()}
        # Walk the timeline backwards, undoing each state change it contains.
        for s in reversed(timeline if undo else []):
            if s.event.is_state():
                key = s.event.state_key_tuple
                if members is not None and key[0] == MEMBER and key[1] not in members:
                    continue
                replaced = s.unsigned.get("replaces_state")
                if isinstance(replaced, str):
                    state_ids[key] = replaced
                else:
                    state_ids.pop(key, None)
        by_id = {v.event.event_id: v for v in current.values()}
        missing = [eid for eid in state_ids.values() if eid not in by_id]
        if missing:
            by_id.update(await self.events.get_events(missing))
        return [by_id[eid] for eid in state_ids.values() if eid in by_id]

    async def room_summary(self, room_id: str, user_id: str, window: int) -> dict[str, Any]:
        joined_count, invited_count, first, gone = await self.memo.get(
            window, ("summary", room_id), lambda: self._member_summary(room_id)
        )
        heroes = [u for u in first if u != user_id][:5]
        if not heroes:
            # The spec: with no one else joined or invited, the heroes are those who left or
            # were banned (so that a client can name the room "Empty room (was Bob)").
            heroes = [u for u in gone if u != user_id][:5]
        return {
            "m.heroes": heroes,
            "m.joined_member_count": joined_count,
            "m.invited_member_count": invited_count,
        }

    async def _member_summary(self, room_id: str) -> tuple[int, int, list[str], list[str]]:
        """(joined count, invited count, the first six joined or invited users by stream
        ordering, and when there are fewer than two of those the first six who left or were
        banned): the heroes of any one user are the first five of either without themselves."""
        joined, invited, first = await self.reads.member_summary(room_id, 6)
        gone = await self.reads.gone_members(room_id, 6) if len(first) < 2 else []
        return joined, invited, first, gone

    async def _left_room(
        self, req: SyncRequest, room_id: str, since: SyncToken | None, leave_stream: int, window: int
    ) -> dict[str, Any]:
        room = await self._room_timeline(
            req, room_id, since.stream if since else None, leave_stream, full=since is None, window=window
        )
        room["account_data"] = {"events": []}
        return room


def _is_empty(response: dict[str, Any]) -> bool:
    rooms = response["rooms"]
    if rooms["join"] or rooms["invite"] or rooms["leave"] or rooms.get("knock"):
        return False
    if response["account_data"]["events"] or response["presence"]["events"]:
        return False
    if response.get("to_device", {}).get("events"):
        return False
    dl = response.get("device_lists", {})
    return not (dl.get("changed") or dl.get("left"))
