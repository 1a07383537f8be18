"""Sliding sync (MSC4186): one request of a connection, long-polling when nothing changed.

A request reads everything up to one stream position (`upto`) and one ephemeral serial,
as /sync v3 does, and records what it sent under a new `pos` (connections.py). The room
list is sorted by activity (rooms.py); each list's filters and ranges, and the room
subscriptions, select the rooms; each selected room gets what changed since the connection
last got it (room_data.py); the extensions follow (extensions.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from homeserver.handlers.auth import Requester
from homeserver.handlers.invite_permission import CONFIG_TYPE as INVITE_CONFIG
from homeserver.handlers.invite_permission import blocks_invites
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.engine import Database
from homeserver.storage.unread import Counts
from homeserver.sync.notifier import Notifier
from homeserver.sync.sliding.config import RoomConfig, SlidingRequest, in_ranges
from homeserver.sync.sliding.connections import Connections, Position
from homeserver.sync.sliding.extensions import ExtensionInput, SlidingExtensions, enabled_extensions
from homeserver.sync.sliding.room_data import RoomContext, RoomData
from homeserver.sync.sliding.rooms import Entry, KnownAccountData, RoomList, known_dm_rooms
from homeserver.sync.sliding.sticky import NAME as STICKY
from homeserver.sync.sliding.sticky import since_for
from homeserver.sync.sliding.thread_subscriptions import NAME as THREAD_SUBS
from homeserver.sync.sliding.thread_subscriptions import limit_for as thread_limit_for


class UnreadCounts(Protocol):
    async def unread_counts(self, user_id: str, room_ids: list[str]) -> dict[str, dict[str, Counts]]: ...


@dataclass(slots=True)
class _Pass:
    response: dict[str, Any]
    position: Position
    news: bool
    # The rooms whose activity would change the answer (the long-poll waits on them).
    watch: list[str]


class SlidingSyncHandler:
    def __init__(
        self,
        db: Database,
        notifier: Notifier,
        account_data: AccountDataStore,
        room_list: RoomList,
        room_data: RoomData,
        extensions: SlidingExtensions,
        unread: UnreadCounts,
        presence_hooks: list[Callable[[str, str | None], Awaitable[None]]],
        connections: Connections,
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.account_data = account_data
        self.room_list = room_list
        self.room_data = room_data
        self.extensions = extensions
        self.unread = unread
        self.presence_hooks = presence_hooks
        self.connections = connections
        self.dm_rooms = known_dm_rooms(account_data)
        self.blocks_invites = KnownAccountData(account_data, INVITE_CONFIG, blocks_invites)

    async def sync(
        self,
        requester: Requester,
        req: SlidingRequest,
        pos: str | None,
        timeout_ms: int,
        set_presence: str | None = None,
    ) -> dict[str, Any]:
        since_for(req.extensions, None)  # a malformed sticky events config: 400 before anything
        thread_limit_for(req.extensions, None)  # and thread subscriptions'
        key = (requester.user_id, requester.device_id or "", req.conn_id)
        conn, prev = await self.connections.resume(key, pos)
        for hook in self.presence_hooks:
            await hook(requester.user_id, set_presence)
        deadline = time.monotonic() + timeout_ms / 1000
        if prev is not None:
            # The position may come from another worker that is ahead of this one.
            await self.db.catch_up(prev.stream)
        timed_out = False
        unchanged = self._unchanged(req, prev)
        if unchanged is not None and timeout_ms > 0 and not self.notifier.closing:
            # Nothing landed since that position was answered, and the request asks what it
            # asked then: a pass would find nothing. Wait first (as /sync v3 parks at once).
            timed_out = not await self.notifier.wait(requester.user_id, unchanged, timeout_ms / 1000)
            await asyncio.sleep(0)  # as /sync v3: the waker (a sender) is answered first
        while True:
            upto = self.db.current_stream_id
            eph = self.notifier.ephemeral_serial
            done = await self._pass(requester, req, prev, upto, eph)
            if (
                done.news
                or prev is None
                or timed_out
                or timeout_ms <= 0
                or self.notifier.closing
                or time.monotonic() >= deadline
            ):
                break
            if self.db.current_stream_id != upto or self.notifier.ephemeral_serial != eph:
                continue  # something landed while this pass ran
            remaining = max(0.0, deadline - time.monotonic())
            timed_out = not await self.notifier.wait(requester.user_id, done.watch, remaining)
            await asyncio.sleep(0)
        done.response["pos"] = await self.connections.record(key, conn, pos, done.position)
        return done.response

    def _unchanged(self, req: SlidingRequest, prev: Position | None) -> list[str] | None:
        """The rooms to wait on when the connection's position is current and this request
        is the one that position answered (the to-device `since` aside); else None."""
        if prev is None or prev.watch is None or prev.shape != _shape(req):
            return None
        if prev.stream != self.db.current_stream_id or prev.ephemeral != self.notifier.ephemeral_serial:
            return None
        if prev.sticky is not None and since_for(req.extensions, prev.sticky) < prev.stream:
            return None  # sticky events left for this request (a limit), or asked for again
        return prev.watch

    async def _pass(
        self, requester: Requester, req: SlidingRequest, prev: Position | None, upto: int, eph: int
    ) -> _Pass:
        user_id = requester.user_id
        sent_before = prev.rooms if prev is not None else {}
        since = prev.stream if prev is not None else None
        # One statement: the memberships and, after the first request, what changed for the
        # user and device since the previous position (the per-user reads below skip on it).
        memberships, probe = await self.room_list.reads.memberships_and_probe(
            user_id, requester.device_id or "", since, upto
        )
        window = await self.room_list.window(since, upto) if since is not None else None
        entries = await self.room_list.entries(user_id, memberships, sent_before, upto)
        invited = any(e.membership == "invite" for e in entries)
        if invited and await self.blocks_invites.get(user_id, since, upto, probe):
            entries = [e for e in entries if e.membership != "invite"]  # spec v1.18 invite permission
        by_id = {e.room_id: e for e in entries}
        dm_rooms = await self.dm_rooms.get(user_id, since, upto, probe)

        configs: dict[str, RoomConfig] = {}
        in_lists: dict[str, list[str]] = {}
        list_rooms: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        matched: set[str] = set()
        for name, lc in req.lists.items():
            matching = await self.room_list.apply(entries, lc.filters, user_id, dm_rooms)
            counts[name] = len(matching)
            matched.update(e.room_id for e in matching)
            chosen = [e.room_id for i, e in enumerate(matching) if in_ranges(i, lc.ranges)]
            list_rooms[name] = chosen
            for room_id in chosen:
                configs[room_id] = configs[room_id].combine(lc.room) if room_id in configs else lc.room
                in_lists.setdefault(room_id, []).append(name)
        # Subscriptions to rooms the user has no membership in are ignored (no peeking).
        subscribed = [r for r in req.subscriptions if r in by_id]
        for room_id in subscribed:
            sub = req.subscriptions[room_id]
            configs[room_id] = configs[room_id].combine(sub) if room_id in configs else sub

        # Rooms the connection holds as they are now, unless an event landed in them since:
        # one statement tells which did, so the others are not read one by one.
        held_rooms = {
            r for r in configs if r in sent_before and sent_before[r].membership == by_id[r].membership
        }
        oldest = min((sent_before[r].stream for r in held_rooms), default=upto)
        active = await self.room_list.rooms_with_events(held_rooms, oldest, upto)
        # Unread counts are read for the rooms sent whole and those whose counts may have
        # moved since the previous position (new notifications, or a receipt: the user's
        # own read receipt clears them); the other held rooms keep those last sent.
        to_count = [
            r
            for r in configs
            if by_id[r].membership == "join"
            and (
                probe is None
                or window is None
                or r not in held_rooms
                or r in probe.push_action_rooms
                or r in window.receipt_rooms
            )
        ]
        unread = await self.unread.unread_counts(user_id, to_count) if to_count else {}
        counted = set(to_count)
        rooms_out: dict[str, Any] = {}
        held = dict(sent_before)
        for room_id, config in configs.items():
            entry: Entry = by_id[room_id]
            if room_id in counted or room_id not in held_rooms:
                main = unread.get(room_id, {}).get("main", Counts())
            else:
                main = Counts(*sent_before[room_id].counts)
            ctx = RoomContext(
                user_id,
                requester.device_id,
                since,
                upto,
                (main.notifications, main.highlights),
                room_id in dm_rooms,
                in_lists.get(room_id, []),
                quiet=room_id in held_rooms and room_id not in active,
            )
            result, held[room_id] = await self.room_data.build(entry, config, sent_before.get(room_id), ctx)
            if result is not None:
                rooms_out[room_id] = result

        was_enabled = prev.extensions if prev is not None else frozenset()
        enabled = enabled_extensions(req.extensions, was_enabled, self.extensions.offered())
        joined_at = {e.room_id: (e.stream, e.event_id) for e in entries if e.membership == "join"}
        thread_limit = None
        if THREAD_SUBS in enabled:
            carried = prev.thread_limit if prev is not None and THREAD_SUBS in was_enabled else None
            thread_limit = thread_limit_for(req.extensions, carried)
        joined = list(joined_at)
        ext, ext_news, sticky = await self.extensions.compute(
            ExtensionInput(
                requester,
                enabled,
                was_enabled,
                req.extensions,
                since,
                prev.ephemeral if prev is not None else None,
                upto,
                list_rooms,
                subscribed,
                joined,
                {r for r, v in rooms_out.items() if v.get("initial")},
                probe,
                memberships,
                window,
                joined_at,
                matched,
                prev.sticky if prev is not None else None,
                rooms_out,
                thread_limit,
            )
        )
        lists_changed = prev is None or prev.lists != counts
        response = {
            "lists": {name: {"count": c} for name, c in counts.items()},
            "rooms": rooms_out,
            "extensions": ext,
        }
        watch = [e.room_id for e in entries]
        position = Position(upto, eph, held, counts, enabled, _shape(req), watch, sticky, thread_limit)
        return _Pass(response, position, bool(rooms_out) or ext_news or lists_changed, watch)


def _shape(req: SlidingRequest) -> tuple[Any, ...]:
    """What a request asks for, but the to-device and sticky events `since` (which move
    every response)."""
    extensions = {
        name: {k: v for k, v in config.items() if not (name in ("to_device", STICKY) and k == "since")}
        for name, config in req.extensions.items()
    }
    return (req.lists, req.subscriptions, extensions)
