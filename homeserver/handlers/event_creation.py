"""Creating local events: build a full PDU, authorise it, persist it, wake syncs.

Every event a local user causes (messages, state, membership) goes through
`EventCreator.create_and_send`. Events in one room are created one at a time
(a per-room lock) so prev_events and depth always form a chain; the event ID
is returned only after the event is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from signedjson.key import SigningKey

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.events import AuthError, Event, auth_types_for_event, build_event, check_auth
from homeserver.events.room_versions import RoomVersion
from homeserver.storage.events import EventStore, TxnInfo
from homeserver.sync.notifier import Notifier

log = logging.getLogger(__name__)

# A local event cites at most this many forward extremities as prev_events.
MAX_PREV_EVENTS = 10
# PDUs over this size are rejected by the spec.
MAX_PDU_BYTES = 65_536

# Called after an event is persisted (federation sending, push, ...).
EventListener = Callable[[Event, int], Awaitable[None]]


class EventCreator:
    def __init__(
        self, store: EventStore, notifier: Notifier, clock: Clock, server_name: str, signing_key: SigningKey
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.server_name = server_name
        self.signing_key = signing_key
        self.listeners: list[EventListener] = []

    def room_lock(self, room_id: str) -> AbstractAsyncContextManager[None]:
        # Per room and, on PostgreSQL, across every worker process sharing the database.
        return self.store.db.room_lock(room_id)

    async def create_and_send(
        self,
        *,
        room_id: str,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        txn: TxnInfo | None = None,
        redacts: str | None = None,
    ) -> tuple[Event, int]:
        """Create, authorise and persist a local event. Returns (event, stream_id)."""
        room_version = await self.store.get_room_version(room_id)
        if room_version is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        lock = self.room_lock(room_id)
        async with lock:
            if txn is not None:
                # A retry may have raced us to the lock.
                existing = await self.store.get_txn_event(txn)
                if existing is not None:
                    stored = await self.store.get_event(existing)
                    if stored is not None:
                        return stored.event, stored.stream_id
            event, auth_map, create = await self._build(
                room_version, room_id, type, sender, content, state_key, redacts
            )
            self._check(event, auth_map, create)
            stream_id = await self.store.persist_event(event, txn=txn)
        await self._after_persist(event, stream_id)
        return event, stream_id

    async def create_room_event(
        self,
        *,
        room_version: RoomVersion,
        room_id: str | None,
        sender: str,
        content: dict[str, Any],
    ) -> tuple[Event, int]:
        """Persist the m.room.create event of a new local room."""
        now = self.clock.time_ms()
        event = build_event(
            room_version=room_version,
            room_id=room_id,
            type="m.room.create",
            sender=sender,
            content=content,
            state_key="",
            prev_event_ids=[],
            auth_event_ids=[],
            depth=1,
            origin_server_ts=now,
            server_name=self.server_name,
            signing_key=self.signing_key,
        )
        self._check(event, {}, event)
        stream_id = await self.store.persist_event(event, new_room=(room_version.identifier, sender, now))
        await self._after_persist(event, stream_id)
        return event, stream_id

    async def _build(
        self,
        room_version: RoomVersion,
        room_id: str,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None,
        redacts: str | None,
    ) -> tuple[Event, dict[tuple[str, str], Event], Event | None]:
        needed = auth_types_for_event(room_version, type, sender, state_key, content)
        needed_with_create = set(needed) | {("m.room.create", "")}
        state = await self.store.get_current_state(room_id, needed_with_create)
        create = state.get(("m.room.create", ""))
        auth_map = {k: v.event for k, v in state.items() if k in set(needed)}
        prevs, depth = await self.store.get_extremities_and_depth(room_id)
        event = build_event(
            room_version=room_version,
            room_id=room_id,
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_event_ids=prevs[:MAX_PREV_EVENTS],
            auth_event_ids=sorted(e.event_id for e in auth_map.values()),
            depth=min(depth + 1, 2**63 - 1),
            origin_server_ts=self.clock.time_ms(),
            server_name=self.server_name,
            signing_key=self.signing_key,
            redacts=redacts,
        )
        return event, auth_map, create.event if create else None

    @staticmethod
    def _check(event: Event, auth_map: dict[tuple[str, str], Event], create: Event | None) -> None:
        from homeserver.events.canonical import canonical_json

        if len(canonical_json(event.pdu)) > MAX_PDU_BYTES:
            raise MatrixError(413, Codes.TOO_LARGE, "Event too large")
        try:
            check_auth(event, auth_map, create)
        except AuthError as e:
            raise MatrixError(403, Codes.FORBIDDEN, str(e)) from None

    async def _after_persist(self, event: Event, stream_id: int) -> None:
        # Listeners (push counts, search, federation queue) run before syncs wake, so a
        # notification count arrives in the same /sync as its event. The event is already
        # durable: a failing listener is logged, never turned into an error for the sender.
        for listener in self.listeners:
            try:
                await listener(event, stream_id)
            except Exception:
                log.exception("event listener failed for %s", event.event_id)
        users = [event.state_key] if event.type == "m.room.member" and event.state_key else []
        self.notifier.notify(rooms=[event.room_id], users=users)
