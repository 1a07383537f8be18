"""Relations: /relations pagination, /threads, and bundled aggregations in `unsigned.m.relations`.

`bundle()` works on already formatted client events, in place, with a fixed number of
queries per batch (edits, thread summaries, references, annotations), so any endpoint
or the /sync extension can call it on a page of events.
"""

from __future__ import annotations

from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.handlers.client_format import client_event, format_events
from homeserver.handlers.erasure import pruned
from homeserver.handlers.messages import MessageHandler, Window
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.relations import RelationsStore
from homeserver.sync.tokens import pagination_token, parse_pagination_token

MAX_LIMIT = 100
DEFAULT_LIMIT = 50
RECURSION_DEPTH = 3
MAX_RECURSIVE_PARENTS = 1000


class RelationsHandler:
    def __init__(
        self, store: RelationsStore, events: EventStore, messages: MessageHandler, clock: Clock
    ) -> None:
        self.store = store
        self.events = events
        self.messages = messages
        self.clock = clock

    async def _visible_parent(self, user_id: str, room_id: str, event_id: str) -> tuple[Window, StoredEvent]:
        window = await self.messages.visible_window(room_id, user_id)
        parent = await self.events.get_event(event_id)
        if parent is None or parent.event.room_id != room_id:
            raise not_found("Event not found")
        if parent.stream_id > window.upper or (
            window.lower is not None and parent.stream_id < window.lower and not parent.event.is_state()
        ):
            raise not_found("Event not found")
        return window, parent

    async def relations(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        event_id: str,
        rel_type: str | None,
        event_type: str | None,
        from_token: str | None,
        to_token: str | None,
        limit: int,
        direction: str,
        recurse: bool,
    ) -> dict[str, Any]:
        if direction not in ("b", "f"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be b or f")
        window, _parent = await self._visible_parent(user_id, room_id, event_id)
        limit = max(1, min(limit, MAX_LIMIT))
        parents = [event_id]
        if recurse:
            frontier = [event_id]
            for _ in range(RECURSION_DEPTH - 1):
                frontier = await self.store.child_ids(frontier, room_id, MAX_RECURSIVE_PARENTS)
                parents.extend(frontier)
                if not frontier or len(parents) >= MAX_RECURSIVE_PARENTS:
                    break
        forwards = direction == "f"
        batch = await self.store.children(
            parents,
            room_id,
            rel_type=rel_type,
            event_type=event_type,
            lower=window.lower,
            upper=window.upper,
            from_pos=parse_pagination_token(from_token) if from_token else None,
            to_pos=parse_pagination_token(to_token) if to_token else None,
            forwards=forwards,
            limit=limit + 1,
        )
        more = len(batch) > limit
        batch = batch[:limit]
        now = self.clock.time_ms()
        # As /messages formats them (redactions' events, sticky events' time left, erased
        # users' events pruned).
        shown = await self.messages.erasure.for_client(user_id, batch)
        chunk = await format_events(self.events, shown, now, device_id=device_id)
        await self.bundle(chunk, user_id)
        out: dict[str, Any] = {"chunk": chunk}
        if more and batch:
            last = batch[-1].stream_id
            out["next_batch"] = pagination_token(last if forwards else last - 1)
        if from_token:
            out["prev_batch"] = from_token
        if recurse:
            out["recursion_depth"] = RECURSION_DEPTH
        return out

    async def threads(
        self, user_id: str, room_id: str, include: str, from_token: str | None, limit: int
    ) -> dict[str, Any]:
        if include not in ("all", "participated"):
            raise MatrixError(400, Codes.INVALID_PARAM, "include must be all or participated")
        window = await self.messages.visible_window(room_id, user_id)
        limit = max(1, min(limit, MAX_LIMIT))
        before = parse_pagination_token(from_token) + 1 if from_token else None
        rows = await self.store.threads(
            room_id, lower=window.lower, upper=window.upper, before=before, limit=limit + 1
        )
        page = rows[:limit]
        ids = [r for r, _ in page]
        if include == "participated":
            # A filtered page may be short; next_batch still continues after the whole page.
            mine = await self.store.participated(ids, user_id)
            ids = [r for r in ids if r in mine]
        found = await self.events.get_events(ids)
        shown = await self.messages.erasure.for_client(user_id, list(found.values()))
        roots = {s.event.event_id: s for s in shown}
        now = self.clock.time_ms()
        chunk = [client_event(roots[r], now) for r in ids if r in roots and roots[r].event.room_id == room_id]
        await self.bundle(chunk, user_id)
        out: dict[str, Any] = {"chunk": chunk}
        if len(rows) > limit:
            out["next_batch"] = pagination_token(page[-1][1] - 1)
        return out

    async def bundle(self, formatted: list[dict[str, Any]], user_id: str) -> None:
        """Add `unsigned.m.relations` to formatted events that have relations (in place)."""
        candidates = [
            e
            for e in formatted
            if isinstance(e.get("event_id"), str) and "redacted_because" not in e.get("unsigned", {})
        ]
        if not candidates:
            return
        ids = [e["event_id"] for e in candidates]
        edits = await self.store.latest_edits(
            [(e["event_id"], e["sender"]) for e in candidates if "state_key" not in e]
        )
        upper = self.messages.db.current_stream_id
        summaries = await self.store.thread_summaries(ids, upper)
        references = await self.store.references(ids)
        annotations = await self.store.annotation_counts(ids)
        participated = await self.store.participated(list(summaries), user_id) if summaries else set()
        latest = await self.events.get_events([s.latest_event_id for s in summaries.values()])
        latest_edits = await self.store.latest_edits(
            [(s.event.event_id, s.event.sender) for s in latest.values()]
        )
        # Erased users' events among them pruned for this user, as in a timeline.
        bundled = [*edits.values(), *latest.values(), *latest_edits.values()]
        hidden = await self.messages.erasure.hidden(user_id, bundled)
        if hidden:
            edits, latest, latest_edits = (
                {k: pruned(v) if v.event.event_id in hidden else v for k, v in found.items()}
                for found in (edits, latest, latest_edits)
            )
        now = self.clock.time_ms()
        for e in candidates:
            eid = e["event_id"]
            rel: dict[str, Any] = {}
            edit = edits.get(eid)
            if edit is not None:
                rel["m.replace"] = client_event(edit, now)
            summary = summaries.get(eid)
            if summary is not None:
                thread: dict[str, Any] = {
                    "count": summary.count,
                    "current_user_participated": eid in participated,
                }
                latest_event = latest.get(summary.latest_event_id)
                if latest_event is not None:
                    latest_json = client_event(latest_event, now)
                    latest_edit = latest_edits.get(latest_event.event.event_id)
                    if latest_edit is not None:
                        latest_json["unsigned"]["m.relations"] = {"m.replace": client_event(latest_edit, now)}
                    thread["latest_event"] = latest_json
                rel["m.thread"] = thread
            if eid in references:
                rel["m.reference"] = {"chunk": [{"event_id": r} for r in references[eid]]}
            if eid in annotations:
                rel["m.annotation"] = {
                    "chunk": [{"type": t, "key": k, "count": n} for t, k, n in annotations[eid]]
                }
            if rel:
                e.setdefault("unsigned", {})["m.relations"] = rel
