"""Server-side search (/search) over room events the user can see (unencrypted rooms only).

Indexed by a listener as events are created; redacted events leave the index. An erased
user's events are not found by those who get them pruned (handlers/erasure.py).
Results are ordered by recency; `order_by: rank` is accepted and ranks are reported
(term occurrences), but pages stay in recency order so pagination is stable.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, bad_json
from homeserver.events import Event
from homeserver.handlers.client_format import client_event
from homeserver.handlers.messages import MessageHandler, Window
from homeserver.storage.events import EventStore
from homeserver.storage.search import SearchStore
from homeserver.sync.filter import EventFilter
from homeserver.sync.tokens import pagination_token, parse_pagination_token

log = logging.getLogger(__name__)

KEYS = {
    "content.body": ("m.room.message", "body"),
    "content.name": ("m.room.name", "name"),
    "content.topic": ("m.room.topic", "topic"),
}
MAX_LIMIT = 50
DEFAULT_LIMIT = 10
MAX_CONTEXT = 20
MAX_TERMS = 8
MAX_TEXT = 10_000


def _indexed(event: Event) -> list[tuple[str, str]]:
    """(key, text) pairs of an event for the index."""
    out = []
    for key, (type_, field) in KEYS.items():
        text = event.content.get(field)
        if event.type == type_ and isinstance(text, str) and text:
            out.append((key, text[:MAX_TEXT]))
    return out


class _SearchWork:
    __slots__ = ("events", "found", "store")

    def __init__(self, store: SearchStore, events: list[Event], found: list[tuple[int, str, str]]) -> None:
        self.store = store
        self.events = events
        self.found = found

    async def write(self, conn: AsyncConnection, stream_ids: list[int]) -> None:
        events = self.events
        await self.store.index_in(
            conn,
            [
                (events[i].event_id, events[i].room_id, stream_ids[i], key, text)
                for i, key, text in self.found
            ],
        )

    def committed(self) -> None:
        return None


class SearchHandler:
    def __init__(
        self, store: SearchStore, events: EventStore, messages: MessageHandler, clock: Clock
    ) -> None:
        self.store = store
        self.events = events
        self.messages = messages
        self.clock = clock

    async def on_event(self, event: Event, stream_id: int) -> None:
        try:
            if event.type == "m.room.redaction" and event.redacts:
                await self.store.remove(event.redacts)
                return
            for key, text in _indexed(event):
                await self.store.index(event.event_id, event.room_id, stream_id, key, text)
        except Exception:
            log.exception("search indexing failed for %s", event.event_id)

    async def prepare_messages(self, events: list[Event]) -> _SearchWork | None:
        """Batch hook: index a batch of new local messages in the batch's transaction."""
        found = [(i, key, text) for i, event in enumerate(events) for key, text in _indexed(event)]
        return _SearchWork(self.store, events, found) if found else None

    async def _windows(self, user_id: str, wanted: list[str] | None) -> dict[str, Window]:
        memberships = await self.events.get_memberships_for_user(user_id)
        room_ids = [r for r, m, _, _ in memberships if m in ("join", "leave", "ban")]
        if wanted is not None:
            room_ids = [r for r in room_ids if r in set(wanted)]
        windows = {}
        for room_id in room_ids:
            try:
                windows[room_id] = await self.messages.visible_window(room_id, user_id)
            except MatrixError:
                continue
        return windows

    async def search(self, user_id: str, body: dict[str, Any], next_batch: str | None) -> dict[str, Any]:
        categories = body.get("search_categories")
        if not isinstance(categories, dict):
            raise MatrixError(400, Codes.MISSING_PARAM, "search_categories is required")
        criteria = categories.get("room_events")
        if criteria is None:
            return {"search_categories": {}}
        if not isinstance(criteria, dict):
            raise bad_json("room_events must be an object")
        term = criteria.get("search_term")
        if not isinstance(term, str) or not term.strip():
            raise MatrixError(400, Codes.MISSING_PARAM, "search_term is required")
        terms = [t.lower() for t in re.findall(r"\w+", term)][:MAX_TERMS] or [term.lower().strip()]
        keys = criteria.get("keys", list(KEYS))
        if not isinstance(keys, list) or not keys or any(k not in KEYS for k in keys):
            raise MatrixError(
                400, Codes.INVALID_PARAM, "keys must be content.body, content.name or content.topic"
            )
        raw_filter: dict[str, Any] = criteria["filter"] if isinstance(criteria.get("filter"), dict) else {}
        event_filter = EventFilter.parse(raw_filter)
        wanted_rooms = raw_filter.get("rooms") if isinstance(raw_filter.get("rooms"), list) else None
        not_rooms = set(raw_filter.get("not_rooms") or [])
        limit = min(event_filter.limit or DEFAULT_LIMIT, MAX_LIMIT)

        windows = await self._windows(user_id, wanted_rooms)
        for r in not_rooms:
            windows.pop(r, None)
        before = parse_pagination_token(next_batch) if next_batch else None
        results: list[tuple[float, Any]] = []
        more = False
        cursor = before
        # Hits outside a user's visible window are skipped; keep reading until the page is full.
        for _ in range(5):
            hits = await self.store.search(list(windows), keys, terms, cursor, limit * 2)
            if not hits:
                break
            stored = await self.events.get_events([h.event_id for h in hits])
            # An erased user's event this user gets pruned has no text left to match.
            pruned = await self.messages.erasure.hidden(user_id, list(stored.values()))
            for h in hits:
                cursor = h.stream_id
                s = stored.get(h.event_id)
                w = windows.get(h.room_id)
                if s is None or w is None or s.redacted_by is not None or h.event_id in pruned:
                    continue
                if h.stream_id > w.upper or (w.lower is not None and h.stream_id < w.lower):
                    continue
                if not event_filter.allows(s.event.type, s.event.sender):
                    continue
                if len(results) == limit:
                    more = True
                    break
                results.append((float(sum(h.value.count(t) for t in terms)), s))
            if more or len(hits) < limit * 2:
                break
        return {
            "search_categories": {
                "room_events": await self._format(user_id, criteria, results, terms, more, windows, keys)
            }
        }

    async def _format(
        self,
        user_id: str,
        criteria: dict[str, Any],
        results: list[tuple[float, Any]],
        terms: list[str],
        more: bool,
        windows: dict[str, Window],
        keys: list[str],
    ) -> dict[str, Any]:
        now = self.clock.time_ms()
        context_req = (
            criteria.get("event_context") if isinstance(criteria.get("event_context"), dict) else None
        )
        out_results = []
        for rank, s in results:
            entry: dict[str, Any] = {"rank": rank, "result": client_event(s, now)}
            if context_req is not None:
                entry["context"] = await self._context(user_id, s, context_req, windows[s.event.room_id], now)
            out_results.append(entry)
        out: dict[str, Any] = {
            "count": await self.store.count(list(windows), keys, terms),
            "highlights": terms,
            "results": out_results,
        }
        if more and results:
            out["next_batch"] = pagination_token(results[-1][1].stream_id)
        if criteria.get("include_state") is True:
            state = {}
            for room_id in {s.event.room_id for _, s in results}:
                current = await self.events.get_current_state(room_id)
                state[room_id] = [client_event(v, now) for v in current.values()]
            out["state"] = state
        groupings = criteria.get("groupings")
        group_by = groupings.get("group_by") if isinstance(groupings, dict) else None
        if isinstance(group_by, list):
            groups: dict[str, Any] = {}
            for g in group_by:
                key = g.get("key") if isinstance(g, dict) else None
                if key not in ("room_id", "sender"):
                    continue
                grouped: dict[str, Any] = {}
                for i, (_, s) in enumerate(results):
                    value = s.event.room_id if key == "room_id" else s.event.sender
                    grouped.setdefault(value, {"results": [], "order": i})["results"].append(s.event.event_id)
                groups[key] = grouped
            out["groups"] = groups
        return out

    async def _context(
        self, user_id: str, s: Any, req: dict[str, Any], window: Window, now: int
    ) -> dict[str, Any]:
        before_n = _bounded(req.get("before_limit"), 5)
        after_n = _bounded(req.get("after_limit"), 5)
        room_id = s.event.room_id
        lower = window.lower - 1 if window.lower is not None else None
        before = (
            await self.events.room_events(room_id, after=lower, upto=s.stream_id - 1, limit=before_n)
            if before_n
            else []
        )
        after = (
            await self.events.room_events(
                room_id, after=s.stream_id, upto=window.upper, limit=after_n, backwards=False
            )
            if after_n
            else []
        )
        before = await self.messages.erasure.for_client(user_id, before)
        after = await self.messages.erasure.for_client(user_id, after)
        ctx: dict[str, Any] = {
            "events_before": [client_event(e, now) for e in before],
            "events_after": [client_event(e, now) for e in after],
            "start": pagination_token((before[-1].stream_id if before else s.stream_id) - 1),
            "end": pagination_token(after[-1].stream_id if after else s.stream_id),
        }
        if req.get("include_profile") is True:
            senders = {e.event.sender for e in [s, *before, *after]}
            members = await self.events.get_current_state(room_id, [("m.room.member", u) for u in senders])
            ctx["profile_info"] = {
                key[1]: {
                    k: v.event.content[k]
                    for k in ("displayname", "avatar_url")
                    if isinstance(v.event.content.get(k), str)
                }
                for key, v in members.items()
            }
        return ctx


def _bounded(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return max(0, min(value, MAX_CONTEXT))
