"""Sticky events (MSC4354, unstable names) over federation.

A server sends its users' sticky events like any other event, and the outbound queue never
drops one: a row leaves `federation_outbox` only once the destination acknowledged it, and a
backlog is sent in full, in order, however long (bridge.queue, bridge.store). Beyond that
the MSC asks three things of a server, done here:

- a server that joins a room (its first member's join enters the room's current state) gets
  this server's own unexpired sticky events of the room, queued after the join, in stream
  order: being older than its join, they would otherwise never reach it (`push_to`). They
  are queued once the new server holds its join (asked for it: GET /event), not at once: a
  server still storing its send_join answer drops PDUs of a room it does not know yet
  (Synapse does: "Ignoring PDU for unknown room_id"), and the room's servers hear of the
  join before the joining server is done with it (the resident server stores the join and
  relays it to them, then answers send_join). A push waiting for its new server is a row of
  `sticky_pending_pushes` (homeserver.storage.sticky_pushes), written when the join arrives
  and deleted in the transaction that queues the push: the process that starts draining the
  outbound queue (at start-up, or a worker taking it over) resumes every row it finds, and
  with several workers the one draining it also takes over rows long overdue (their worker
  died). The push sends every unexpired sticky event of the room, also those sent after the
  join: one the server already has costs only bytes, and missing one is what this is for;
- a remote sticky event that failed the auth rules against the room's current state is
  stored soft-failed (bridge.events_in records it with `soft_failed` in the transaction
  storing it) and checked again whenever the room's authorising state changes (members,
  power levels, join rules; `recheck`): one that passes then is accepted at a fresh stream
  position, and syncing clients get it in their sticky section;
- sticky events of erased users (deactivated with `erase`: homeserver/storage/erased_users.py)
  are not sent to a server catching up (`unsendable`): their stale sticky events, call
  memberships mostly, have no one left to speak for them.

Nothing here runs on the path of an ordinary message: only a change to one of those state
types looks at the room's soft-failed sticky rows (one indexed query), and only a member
joining from another server looks for a new server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import select

from bridge.client import FederationClient, FederationError, fed_path
from homeserver.events import Event
from homeserver.events.identifiers import domain_of
from homeserver.server import HomeServer
from homeserver.state import StateMap
from homeserver.storage import sticky_events, sticky_pushes
from homeserver.storage.erased_users import ErasedUsers
from homeserver.storage.schema import current_state
from homeserver.storage.sticky_pushes import PendingPush

if TYPE_CHECKING:
    from bridge.events_in import FederationEventHandler, StateChanges
    from bridge.queue import OutboundQueue
    from bridge.store import FederationStore

log = logging.getLogger(__name__)

# The state a soft-failed event's fate depends on (what the MSC names, as Synapse has it).
AUTHORISING_TYPES = frozenset({"m.room.member", "m.room.power_levels", "m.room.join_rules"})
# Asking a new server for its join: first after this long, doubling up to the maximum; after
# READY_WAIT_S the sticky events are queued anyway.
READY_FIRST_S = 0.2
READY_MAX_S = 10.0
READY_WAIT_S = 120.0
# New servers waited for at once, at most (each is one task asking now and then); a push
# beyond that stays in its table until the sweep below takes it up.
MAX_WAITING = 1_000
# The process draining the outbound queue looks this often for pending pushes whose next
# attempt is ORPHANED_AFTER_MS overdue: their worker is gone, or queueing them failed (one
# waited for moves the attempt time on at every attempt, each at most a 10 s request late).
SWEEP_S = 30.0
ORPHANED_AFTER_MS = 60_000


def _domain(user_id: str) -> str:
    try:
        return domain_of(user_id)
    except ValueError:
        return ""


async def unsendable(erased_users: ErasedUsers, server_name: str, events: Iterable[Event]) -> set[str]:
    """The IDs of those events that are sticky events of this server's erased users: not
    sent from the outbox (what is still queued for a server is what it has to catch up)."""
    if erased_users.nobody:
        return set()
    suffix = ":" + server_name
    sticky = [e for e in events if sticky_events.FIELD in e.pdu and e.sender.endswith(suffix)]
    if not sticky:
        return set()
    erased = await erased_users.among({e.sender for e in sticky})
    return {e.event_id for e in sticky if e.sender in erased}


class StickyFederation:
    def __init__(
        self,
        hs: HomeServer,
        inbound: FederationEventHandler,
        store: FederationStore,
        queue: OutboundQueue,
        client: FederationClient,
    ) -> None:
        self.hs = hs
        self.inbound = inbound
        self.store = store
        self.queue = queue
        self.client = client
        # Pushes waiting for their new server to hold its join, by (room, server): the join
        # each waits for, and its task.
        self._waiting: dict[tuple[str, str], tuple[str, asyncio.Task[None]]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.ready_first_s = READY_FIRST_S
        self.sweep_s = SWEEP_S
        # Pending pushes taken up from the table (tests, metrics).
        self.resumed = 0
        # Soft-failed sticky events accepted since, and sticky events pushed to each new
        # server (tests, metrics).
        self.accepted = 0
        self.pushed: Counter[str] = Counter()

    def install(self) -> None:
        if not self.hs.config.sticky_events.enabled:
            return
        self.inbound.state_changed = self.on_remote_state_change
        self.hs.creator.listeners.append(self.on_local_event)
        self.queue.start_hooks.append(self.resume)

    async def stop(self) -> None:
        tasks = [task for _, task in self._waiting.values()]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._waiting.clear()

    # Hooks ----------------------------------------------------------------------------------

    async def on_local_event(self, event: Event, stream_id: int) -> None:
        """EventCreator listener: a local event that changed the room's authorising state."""
        if event.type not in AUTHORISING_TYPES or not event.is_state():
            return
        senders = {event.state_key} if event.type == "m.room.member" and event.state_key else None
        try:
            async with self.hs.db.read() as conn:
                now = self.hs.clock.time_ms()
                if not await sticky_events.soft_failed_in_room(conn, event.room_id, now, senders):
                    return
            async with self.hs.creator.room_lock(event.room_id):
                await self.recheck(event.room_id, senders)
        except Exception:
            log.exception("re-checking soft-failed sticky events after %s failed", event.event_id)

    async def on_remote_state_change(self, event: Event, before: StateMap, changes: StateChanges) -> None:
        """Under the room lock, after a remote event changed the room's current state."""
        keys = [k for k in changes if k[0] in AUTHORISING_TYPES]
        if not keys:
            return
        room_id = event.room_id
        members = all(k[0] == "m.room.member" for k in keys)
        await self.recheck(room_id, {k[1] for k in keys} if members else None)
        joins = {
            k[1]: v[0]
            for k in keys
            if k[0] == "m.room.member" and (v := changes[k]) is not None and v[1] == "join"
        }
        for server, join_id in sorted((await self._new_servers(room_id, before, joins)).items()):
            await self._schedule(room_id, server, join_id)

    # Soft-failed sticky events ----------------------------------------------------------------

    async def recheck(self, room_id: str, senders: set[str] | None) -> int:
        """Check the room's unexpired soft-failed sticky events (those of `senders`, if given)
        against its current state, as the soft-failure check did; accept those that pass.
        Called under the room lock. Returns how many were accepted."""
        now = self.hs.clock.time_ms()
        async with self.hs.db.read() as conn:
            ids = await sticky_events.soft_failed_in_room(conn, room_id, now, senders)
        if not ids:
            return 0
        found = await self.hs.events.get_pdus(ids)
        current = await self.hs.events.get_current_state_ids(room_id)
        passing = [
            event_id
            for event_id in ids
            if event_id in found
            and await self.inbound.current_state_failure(found[event_id], current) is None
        ]
        if not passing:
            return 0
        async with self.hs.db.write() as conn:
            positions = {event_id: await self.hs.db.next_stream_id() for event_id in passing}
            await sticky_events.accept_soft_failed(conn, positions)
        log.info("%d soft-failed sticky events of %s now pass the auth rules", len(passing), room_id)
        self.accepted += len(passing)
        self.hs.notifier.notify(rooms=[room_id])
        return len(passing)

    # New servers ----------------------------------------------------------------------------

    async def _new_servers(self, room_id: str, before: StateMap, joins: dict[str, str]) -> dict[str, str]:
        """The other servers these joins (user ID -> join event ID) brought into the room,
        none of whose members was joined before the change, each with one of the joins."""
        by_server: dict[str, list[str]] = {}
        for user_id in joins:
            server = _domain(user_id)
            if server and server != self.hs.server_name:
                by_server.setdefault(server, []).append(user_id)
        if not by_server:
            return {}
        prev_ids = [p for u in joins if (p := before.get(("m.room.member", u))) is not None]
        prev = await self.hs.events.get_pdus(prev_ids) if prev_ids else {}
        already = {_domain(e.state_key or "") for e in prev.values() if e.membership == "join"}
        new: dict[str, str] = {}
        for server, user_ids in by_server.items():
            if server not in already and not await self._others_joined(room_id, server, user_ids):
                new[server] = joins[user_ids[0]]
        return new

    async def _others_joined(self, room_id: str, server: str, user_ids: list[str]) -> bool:
        """Whether a user of `server` other than `user_ids` is joined to the room."""
        c = current_state.c
        q = (
            select(c.state_key)
            .where(
                c.room_id == room_id,
                c.type == "m.room.member",
                c.membership == "join",
                c.state_key.endswith(":" + server, autoescape=True),
                c.state_key.not_in(user_ids),
            )
            .limit(1)
        )
        async with self.hs.db.read() as conn:
            return (await conn.execute(q)).first() is not None

    async def _schedule(self, room_id: str, server: str, join_id: str) -> None:
        """Push to `server` once it holds its join `join_id`: recorded, then waited for here."""
        now = self.hs.clock.time_ms()
        push = PendingPush(room_id, server, join_id, now, now + int(self.ready_first_s * 1000))
        durable = True
        try:
            async with self.hs.db.write() as conn:
                await sticky_pushes.record(conn, push)
        except Exception:
            # Still pushed from memory (as long as this process lives).
            log.exception("recording the sticky push of %s to %s failed", room_id, server)
            durable = False
        self._start(push, durable)

    def _start(self, push: PendingPush, durable: bool) -> bool:
        """Wait for the push's server in a task, unless one waits for the same join already."""
        key = (push.room_id, push.destination)
        running = self._waiting.get(key)
        if running is not None and not running[1].done():
            if running[0] == push.join_event_id:
                return False
            running[1].cancel()  # an older join's: its row was replaced
            del self._waiting[key]
        if len(self._waiting) >= MAX_WAITING:
            log.warning(
                "too many new servers waited for: not pushing sticky events to %s now", push.destination
            )
            return False
        task = asyncio.create_task(self._wait_then_push(push, durable))
        self._waiting[key] = (push.join_event_id, task)

        def done(t: asyncio.Task[None]) -> None:
            if (entry := self._waiting.get(key)) is not None and entry[1] is t:
                del self._waiting[key]

        task.add_done_callback(done)
        return True

    async def _wait_then_push(self, push: PendingPush, durable: bool) -> None:
        """Queue the sticky events for the push's server once it holds its join (or
        READY_WAIT_S after the join arrived: it may not serve events, or be slow; the push is
        worth a try). `durable`: the push has its row, moved on at every attempt and taken
        when queueing (if another process took it meanwhile, this one stops)."""
        clock = self.hs.clock
        deadline = push.scheduled_ts + int(READY_WAIT_S * 1000)
        delay = self.ready_first_s
        path = fed_path("/_matrix/federation/v1/event/{}", push.join_event_id)
        try:
            while clock.time_ms() < deadline:
                wait_ms = min(push.next_attempt_ts, deadline) - clock.time_ms()
                if wait_ms > 0:
                    await asyncio.sleep(wait_ms / 1000)
                try:
                    await self.client.get(push.destination, path, timeout=10)
                    break
                except FederationError:
                    delay = min(delay * 2, READY_MAX_S)
                    push.next_attempt_ts = clock.time_ms() + int(delay * 1000)
                if durable and not await self._postpone(push):
                    return  # taken by another process, or replaced by a newer join's push
            await self._queue_push(push.room_id, push.destination, push if durable else None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pushing sticky events of %s to %s failed", push.room_id, push.destination)

    async def _postpone(self, push: PendingPush) -> bool:
        try:
            async with self.hs.db.write() as conn:
                return await sticky_pushes.postpone(conn, push)
        except Exception as e:
            # The row keeps its older time: the attempts go on here all the same.
            log.warning("moving on the sticky push of %s to %s failed: %s", push.room_id, push.destination, e)
            return True

    async def resume(self) -> int:
        """Take up the pending pushes of the table (this process starts draining the outbound
        queue: at start-up, or taking it over; a push a live worker still waits for is then
        asked about twice, and queued once), and keep taking up those overdue while this
        process drains it: their worker is gone, or their queueing failed (a database error).
        Returns how many were taken up."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="sticky-push-sweep")
        return await self._resume(None)

    async def _resume(self, due_before: int | None) -> int:
        async with self.hs.db.read() as conn:
            rows = await sticky_pushes.pending(conn, due_before, MAX_WAITING)
        taken = sum(self._start(push, True) for push in rows)
        if taken:
            log.info("resumed %d pending sticky pushes to new servers", taken)
            self.resumed += taken
        return taken

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            if not self.queue.leading:
                return  # another worker drains the queue now (and sweeps)
            try:
                await self._resume(self.hs.clock.time_ms() - ORPHANED_AFTER_MS)
            except Exception as e:
                log.warning("looking for orphaned sticky pushes failed: %s: %s", type(e).__name__, e)

    async def push_to(self, room_id: str, server: str) -> int:
        """Queue this server's own unexpired sticky events of the room for `server` (after
        what is queued for it already: its join's successors). Returns how many."""
        return await self._queue_push(room_id, server, None)

    async def _queue_push(self, room_id: str, server: str, pending: PendingPush | None) -> int:
        """`push_to`; with `pending`, only if its row is still there, deleted in the same
        transaction (whatever is queued, even nothing: the push is done, or given up)."""
        event_ids = await self._sendable(room_id, server)
        now = self.hs.clock.time_ms()
        if pending is not None or event_ids:
            async with self.hs.db.write() as conn:
                if pending is not None and not await sticky_pushes.take(conn, pending):
                    return 0  # another process queued it (or a newer join's push will)
                if event_ids:
                    await self.store.enqueue_pdus_in(conn, [server], now, event_ids)
        if not event_ids:
            return 0
        self.queue.wake(server)
        self.pushed[server] += len(event_ids)
        log.info("pushing %d sticky events of %s to %s, new in the room", len(event_ids), room_id, server)
        return len(event_ids)

    async def _sendable(self, room_id: str, server: str) -> list[str]:
        """This server's own unexpired sticky events of the room that `server` gets, in
        stream order: none if it has no one in the room."""
        if not await self._others_joined(room_id, server, []):
            return []  # it left (or was kicked) meanwhile, or its join never took
        now = self.hs.clock.time_ms()
        async with self.hs.db.read() as conn:
            rows = await sticky_events.own_active_in_room(conn, room_id, self.hs.server_name, now)
        if not rows:
            return []
        erased = await self.hs.accounts.erased.among({sender for _, sender in rows})
        return [event_id for event_id, sender in rows if sender not in erased]
