"""Local messages on their way to other servers, recorded in their own batch's transaction.

Every local event gets a row in `federation_event_state` (the state after it, for the
federation API's state queries) and, in a room with members elsewhere, a row per remote
server in the outbox. For a batch of messages (the event creator's group commit) these
rows are written in the batch's transaction by a batch hook, as push actions are: one
commit per batch, instead of one more write transaction per message afterwards. State
events, and any event not group-committed, still take the listener path
(`Federation.on_local_event`).

A message changes no state, so every message of a batch has the state after the first
one's prev events: one state group, already stored for those prevs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.queue import OutboundQueue
from bridge.state import INSERT_EVENT_STATE, EventStateInfo, PreparedState, StateTracker
from bridge.store import FederationStore
from homeserver.events import Event
from homeserver.server import HomeServer

log = logging.getLogger(__name__)


class _OutboundWork:
    """A batch's state rows and outbox rows: written in its transaction, sent after the commit."""

    __slots__ = ("destinations", "events", "group", "owner", "prepared")

    def __init__(
        self, owner: OutboundMessages, events: list[Event], prepared: PreparedState, destinations: set[str]
    ) -> None:
        self.owner = owner
        self.events = events
        self.prepared = prepared
        self.destinations = destinations
        self.group: int | None = None

    async def write(self, conn: AsyncConnection, stream_ids: list[int]) -> None:
        owner = self.owner
        first, rest = self.events[0], self.events[1:]
        # A new event's ID is known nowhere else yet: it has no row to look for.
        self.group = group = await owner.tracker.write(conn, self.prepared, fresh=True)
        await INSERT_EVENT_STATE.run(conn, [(e.event_id, first.room_id, group, None, False) for e in rest])
        if self.destinations:
            now = owner.hs.clock.time_ms()
            await owner.store.enqueue_pdus_in(conn, self.destinations, now, [e.event_id for e in self.events])

    def committed(self) -> None:
        owner = self.owner
        info = EventStateInfo(self.group, None, False)
        for event in self.events:
            owner.tracker.settled(event.event_id, info)
        for destination in self.destinations:
            owner.queue.wake(destination)


class OutboundMessages:
    def __init__(
        self,
        hs: HomeServer,
        tracker: StateTracker,
        store: FederationStore,
        queue: OutboundQueue,
        room_servers: Callable[[str], Awaitable[set[str]]],
    ) -> None:
        self.hs = hs
        self.tracker = tracker
        self.store = store
        self.queue = queue
        self.room_servers = room_servers

    async def prepare_messages(self, events: list[Event]) -> _OutboundWork:
        """Batch hook (under the room's lock, before the batch's transaction)."""
        first = events[0]
        room_id = first.room_id
        # The listener path may still be recording the state after the prev events (a state
        # event committed just before): it holds this lock while it does.
        async with self.tracker.room_lock(room_id):
            state = await self.tracker.state_before(first)
            if state is None:
                log.info("state before %s unknown: using the room's current state", first.event_id)
                state = await self.hs.events.get_current_state_ids(room_id)
        prepared = await self.tracker.prepare(first, state, first.prev_event_ids)
        destinations = await self.room_servers(room_id) - {self.hs.server_name, ""}
        return _OutboundWork(self, events, prepared, destinations)
