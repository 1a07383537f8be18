"""/sync v3: initial and incremental syncs, long-polling on the notifier.

A sync reads everything up to one stream position `upto` (captured at the
start, always a fully committed position) and returns `s{upto}_{ephemeral}`
as next_batch, so consecutive syncs neither miss nor repeat rows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from homeserver.clock import Clock
from homeserver.handlers.auth import Requester
from homeserver.handlers.client_format import (
    STRIPPED_STATE_TYPES,
    format_events,
    remote_room_summary,
    stripped_state,
)
from homeserver.handlers.ephemeral import ReceiptHandler, TypingHandler, receipts_to_edu_content
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.engine import Database
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.sync.filter import SyncFilter
from homeserver.sync.notifier import Notifier
from homeserver.sync.tokens import SyncToken, pagination_token

StateKey = tuple[str, str]


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
    ) -> None:
        self.db = db
        self.events = events
        self.account_data = account_data
        self.typing = typing
        self.receipts = receipts
        self.notifier = notifier
        self.clock = clock
        self.extensions = extensions

    async def sync(self, req: SyncRequest) -> dict[str, Any]:
        deadline = time.monotonic() + req.timeout_ms / 1000
        if req.since is not None:
            # The token may come from another worker that is ahead of this one.
            await self.db.catch_up(req.since.stream)
        while True:
            upto = self.db.current_stream_id
            eph = self.notifier.ephemeral_serial
            response, joined = await self._compute(req, upto, eph)
            if response.pop("_to_device_limited", False):
                # More to-device messages are queued than one sync carries: answer with a token
                # no later than the last one delivered, so the rest come next time.
                capped = int(response.pop("_to_device_upto"))
                response, joined = await self._compute(req, min(capped, upto), eph)
                response.pop("_to_device_limited", None)
                response.pop("_to_device_upto", None)
                return response
            remaining = deadline - time.monotonic()
            if (
                req.since is None
                or req.full_state
                or remaining <= 0
                or self.notifier.closing
                or not _is_empty(response)
            ):
                return response
            # Something may have landed while we computed: recompute rather than sleep through it.
            if self.db.current_stream_id != upto or self.notifier.ephemeral_serial != eph:
                continue
            if not await self.notifier.wait(req.requester.user_id, joined, remaining):
                return response
            # Woken: loop and compute the new data (a wake for someone else yields an empty pass).
            await asyncio.sleep(0)

    async def _compute(self, req: SyncRequest, upto: int, eph: int) -> tuple[dict[str, Any], list[str]]:
        user_id = req.requester.user_id
        since = req.since
        memberships = await self.events.get_memberships_for_user(user_id)
        joined = [(r, s) for r, m, _, s in memberships if m == "join" and req.filter.allows_room(r)]
        joined_ids = [r for r, _ in joined]
        all_joined = [r for r, m, _, _ in memberships if m == "join"]

        rooms_join: dict[str, Any] = {}
        changed_rooms: set[str] | None = None
        if since is not None and not req.full_state:
            changed_rooms = await self.events.rooms_with_events_between(joined_ids, since.stream, upto)
        receipts = await self.receipts.store.get_since(joined_ids, since.stream if since else None, upto)
        receipts_by_room: dict[str, list[Any]] = {}
        for r in receipts:
            receipts_by_room.setdefault(r.room_id, []).append(r)
        glob_ad, room_ad = await self.account_data.get_since(user_id, since.stream if since else None, upto)

        for room_id, member_stream in joined:
            newly_joined = since is not None and member_stream > since.stream
            full = since is None or req.full_state or newly_joined
            room: dict[str, Any] = {}
            if full or (changed_rooms is not None and room_id in changed_rooms):
                # full_state resends the state, but the timeline still starts at `since`
                # (unless the user joined since then).
                after = None if since is None or newly_joined else since.stream
                room = await self._room_timeline(req, room_id, after, upto, full)
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
            if room_ad.get(room_id):
                room["account_data"] = {
                    "events": [{"type": t, "content": c} for t, c in room_ad[room_id].items()]
                }
            if room:
                room.setdefault("timeline", {"events": [], "limited": False})
                room.setdefault("state", {"events": []})
                room.setdefault("ephemeral", {"events": []})
                room.setdefault("account_data", {"events": []})
                rooms_join[room_id] = room

        forgotten = await self.events.forgotten_rooms(user_id) if memberships else set()
        rooms_invite: dict[str, Any] = {}
        rooms_leave: dict[str, Any] = {}
        for room_id, membership, event_id, stream in memberships:
            if not req.filter.allows_room(room_id):
                continue
            is_new = since is None or stream > since.stream
            if membership == "invite" and is_new:
                rooms_invite[room_id] = {
                    "invite_state": {"events": await self._invite_state(room_id, event_id)}
                }
            elif membership in ("leave", "ban") and room_id not in forgotten:
                if (since is None and req.filter.include_leave) or (since is not None and is_new):
                    rooms_leave[room_id] = await self._left_room(req, room_id, since, stream)

        response: dict[str, Any] = {
            "next_batch": str(SyncToken(upto, eph)),
            "rooms": {"join": rooms_join, "invite": rooms_invite, "leave": rooms_leave, "knock": {}},
            "account_data": {"events": [{"type": t, "content": c} for t, c in glob_ad.items()]},
            "presence": {"events": []},
        }
        for ext in self.extensions:
            await ext.sync_fields(req.requester, since.stream if since else None, upto, all_joined, response)
        return response, all_joined

    async def _room_timeline(
        self, req: SyncRequest, room_id: str, after: int | None, upto: int, full: bool
    ) -> dict[str, Any]:
        f = req.filter
        limit = f.timeline_limit
        batch = await self.events.room_events(
            room_id,
            after=after,
            upto=upto,
            limit=limit + 1,
            backwards=True,
            types=f.timeline.types,
            not_types=f.timeline.not_types,
        )
        limited = len(batch) > limit
        timeline = list(reversed(batch[:limit]))
        timeline = [s for s in timeline if f.timeline.allows(s.event.type, s.event.sender)]
        timeline_ids = {s.event.event_id for s in timeline}
        state: list[StoredEvent]
        if full:
            state = await self._state_at_timeline_start(room_id, timeline)
        elif limited:
            state = [
                s
                for s in await self.events.get_state_changed_since(room_id, after or 0, upto)
                if s.event.event_id not in timeline_ids
            ]
        else:
            state = []
        if f.lazy_load_members:
            senders = {s.event.sender for s in timeline} | {req.requester.user_id}
            state = [s for s in state if s.event.type != "m.room.member" or s.event.state_key in senders]
            have = {s.event.state_key for s in state if s.event.type == "m.room.member"}
            have |= {s.event.state_key for s in timeline if s.event.type == "m.room.member"}
            missing = [("m.room.member", u) for u in senders - have if u is not None]
            if missing and (full or limited or timeline):
                state.extend((await self.events.get_current_state(room_id, missing)).values())
        state = [s for s in state if f.state.allows(s.event.type, s.event.sender)]
        now = self.clock.time_ms()
        prev = (timeline[0].stream_id - 1) if timeline else upto
        room: dict[str, Any] = {
            "timeline": {
                "events": await format_events(
                    self.events, timeline, now, device_id=req.requester.device_id, include_room_id=False
                ),
                "limited": limited,
                "prev_batch": pagination_token(prev),
            },
            "state": {"events": await format_events(self.events, state, now, include_room_id=False)},
        }
        if full or any(s.event.type == "m.room.member" for s in timeline + state):
            room["summary"] = await self._summary(room_id, req.requester.user_id)
        return room

    async def _state_at_timeline_start(self, room_id: str, timeline: list[StoredEvent]) -> list[StoredEvent]:
        current = await self.events.get_current_state(room_id)
        state_ids: dict[StateKey, str] = {k: v.event.event_id for k, v in current.items()}
        # Walk the timeline backwards, undoing each state change it contains.
        for s in reversed(timeline):
            if s.event.is_state():
                key = s.event.state_key_tuple
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

    async def _summary(self, room_id: str, user_id: str) -> dict[str, Any]:
        joined = await self.events.get_room_members(room_id, "join")
        invited = await self.events.get_room_members(room_id, "invite")
        heroes = sorted(u for u in joined + invited if u != user_id)[:5]
        return {
            "m.heroes": heroes,
            "m.joined_member_count": len(joined),
            "m.invited_member_count": len(invited),
        }

    async def _invite_state(self, room_id: str, invite_event_id: str) -> list[dict[str, Any]]:
        state = await self.events.get_current_state(room_id, types=STRIPPED_STATE_TYPES)
        out = [stripped_state(s) for s in state.values()]
        invite = await self.events.get_event(invite_event_id)
        if invite is None:
            return out
        if not out:
            # A room this server is not in: the inviting server sent a summary with the invite.
            out = remote_room_summary(invite, "invite_room_state")
        stripped = stripped_state(invite)
        stripped["event_id"] = invite.event.event_id
        stripped["origin_server_ts"] = invite.event.origin_server_ts
        out.append(stripped)
        return out

    async def _left_room(
        self, req: SyncRequest, room_id: str, since: SyncToken | None, leave_stream: int
    ) -> dict[str, Any]:
        room = await self._room_timeline(
            req, room_id, since.stream if since else None, leave_stream, full=since is None
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
