"""Receiving remote PDUs: every check the spec requires, then persisting with state.

`FederationEventHandler.receive(origin, pdu)` runs, in order (server-server API "Checks
performed on receipt of a PDU"):
1-3. format, signatures, content hash (bridge.pdu);
     missing prev_events are fetched (get_missing_events, then the state at them);
     missing auth_events are fetched (event_auth) and checked themselves;
4. auth against the event's auth_events  -> rejected if it fails;
5. auth against the state before the event -> rejected if it fails;
6. auth against the current state -> soft-failed if it fails.
A rejected or soft-failed event is stored as an outlier (never shown to clients, never a
forward extremity); an accepted one joins the timeline and the room's current state is
re-resolved across its forward extremities.

Invariant: events of one room are persisted one at a time, under the same per-room lock
local events use, so forward extremities and current state never interleave.

While this server joins a room (make_join/send_join), PDUs for the room wait for the join to
be stored (`joining`, `wait_for_join`), at most JOIN_WAIT_S from the join's start. With
several workers the joining worker also records the join in the database
(homeserver.storage.remote_joins), and a worker that gets a PDU for a room it does not know
looks there before dropping it: if another worker is joining the room, it waits for the room
to appear (`wait_for_other_join`: asking the database every JOIN_POLL_S, sooner when the
joining worker's broadcast says it is done). A PDU for a room this worker knows costs nothing
more, and one process (SQLite, or PostgreSQL alone) writes and asks nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.acl import room_allows
from bridge.client import FederationClient, FederationError, fed_path
from bridge.keys import KeyRing
from bridge.message_runs import persist_run
from bridge.pdu import PduError, parse_pdu, verify_signatures
from bridge.policy import RoomPolicy
from bridge.state import EventStateInfo, StateTracker, write_outlier_status
from homeserver.events import AuthError, Event, auth_types_for_event, check_auth, validate_auth_event_list
from homeserver.events.room_versions import RoomVersion
from homeserver.server import HomeServer
from homeserver.state import StateMap
from homeserver.storage import remote_joins, sticky_events

log = logging.getLogger(__name__)

MISSING_EVENTS_LIMIT = 10
MAX_FETCH_CONCURRENCY = 10
# A PDU for a room this server is joining waits this long for the join to be stored.
JOIN_WAIT_S = 30.0
# With several workers: how often a PDU for a room another worker is joining looks whether
# the join is stored, and the topic on which the joining worker says it is done.
JOIN_POLL_S = 0.5
JOIN_DONE_TOPIC = "federation.join_done"

# Called after a remote event was accepted into a room's timeline; the flag says whether the
# event creator's batch hooks (push actions, search) were written in the event's transaction.
AcceptedListener = Callable[[Event, int, bool], Awaitable[None]]
StateChanges = dict[tuple[str, str], tuple[str, str | None] | None]
# Called under the room lock after a remote event changed the room's current state:
# (the event, the current state before it, the changes).
StateChangeHook = Callable[[Event, StateMap, StateChanges], Awaitable[None]]


class EventRejected(Exception):
    """The event failed the authorisation rules (it is stored, but as rejected)."""


class FederationEventHandler:
    def __init__(
        self, hs: HomeServer, tracker: StateTracker, keyring: KeyRing, client: FederationClient
    ) -> None:
        self.hs = hs
        self.events = hs.events
        self.tracker = tracker
        self.keyring = keyring
        self.client = client
        self.accepted_listeners: list[AcceptedListener] = []
        # The rooms' Policy Servers (bridge.policy): a new event they will not sign is soft-failed.
        self.policy: RoomPolicy | None = None
        # Sticky events (bridge.sticky): told of changes to a room's current state.
        self.state_changed: StateChangeHook | None = None
        # Rooms this server is joining (over federation): (done, joins under way, the
        # loop time after which PDUs for the room no longer wait).
        self._joins: dict[str, tuple[asyncio.Event, list[int], float]] = {}
        # With several workers: this process's name in the joins it records, the last
        # write of each room's record (they run in order), and, per room another worker is
        # joining, the one task waiting for it (which PDUs share) and what wakes it.
        self._joiner = os.urandom(8).hex()
        self._join_writes: dict[str, asyncio.Task[None]] = {}
        self._other_joins: dict[str, asyncio.Task[bool]] = {}
        self._join_done: dict[str, asyncio.Event] = {}
        # PDUs' waits for another worker's join (tests, metrics).
        self.other_join_waits = 0
        hs.invalidations.subscribe(JOIN_DONE_TOPIC, self._on_join_done)
        # Runs of messages stored in one transaction (receive_run), their events, and runs
        # that needed the full checks instead.
        self.runs = 0
        self.run_events = 0
        self.runs_declined = 0

    # Entry points ---------------------------------------------------------------------------

    async def is_participating(self, room_id: str) -> bool:
        create = ("m.room.create", "")
        return create in await self.events.get_current_state(room_id, [create])

    async def room_version_for(self, room_id: Any) -> RoomVersion:
        if not isinstance(room_id, str):
            raise PduError("PDU has no room_id")
        rv = await self.events.get_room_version(room_id)
        if rv is None or not await self.is_participating(room_id):
            raise PduError(f"this server is not in room {room_id}")
        return rv

    @contextlib.contextmanager
    def joining(self, room_id: str) -> Iterator[None]:
        """While this server joins a room: PDUs for it wait for the join (`await_room`). The
        resident server may send some before its send_join answer is stored here (sticky
        events it pushes to a new server, messages sent just after the join)."""
        entry = self._joins.get(room_id)
        shared = not self.hs.db.exclusive
        if entry is None:
            deadline = asyncio.get_running_loop().time() + JOIN_WAIT_S
            entry = self._joins[room_id] = (asyncio.Event(), [0], deadline)
            if shared:
                now = self.hs.clock.time_ms()
                until = now + int(JOIN_WAIT_S * 1000)
                self._write_join(room_id, lambda c: remote_joins.record(c, room_id, self._joiner, until, now))
        entry[1][0] += 1
        stored = False
        try:
            yield
            stored = True
        finally:
            entry[1][0] -= 1
            if entry[1][0] == 0:
                entry[0].set()
                self._joins.pop(room_id, None)
                if shared:
                    if not stored:
                        self._write_join(room_id, lambda c: remote_joins.forget(c, room_id, self._joiner))
                    self.hs.invalidations.broadcast(JOIN_DONE_TOPIC, room_id)

    async def wait_for_join(self, room_id: Any) -> None:
        """If this server is joining the room: until the join is stored, or at most until
        JOIN_WAIT_S after the join began (however many PDUs of a transaction wait for it)."""
        join = self._joins.get(room_id) if isinstance(room_id, str) else None
        if join is None:
            return
        remaining = join[2] - asyncio.get_running_loop().time()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(join[0].wait(), remaining)

    def _write_join(self, room_id: str, write: Callable[[AsyncConnection], Awaitable[None]]) -> None:
        """Write this process's record of its join of the room, after the previous write."""
        previous = self._join_writes.get(room_id)

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                async with self.hs.db.write() as conn:
                    await write(conn)
            except Exception as e:
                log.warning("recording the join of %s for other workers failed: %s", room_id, e)

        task = asyncio.create_task(run())
        self._join_writes[room_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._join_writes.get(room_id) is t:
                del self._join_writes[room_id]

        task.add_done_callback(done)

    async def join_recorded(self, room_id: str) -> None:
        """Until this process's record of its join of the room is written (before asking
        for the join, so that the resident server's first PDUs find it on any worker)."""
        task = self._join_writes.get(room_id)
        if task is not None:
            await asyncio.wait([task])

    def _on_join_done(self, room_id: Any) -> None:
        if isinstance(room_id, str) and (done := self._join_done.get(room_id)) is not None:
            done.set()

    async def wait_for_other_join(self, room_id: Any) -> bool:
        """For a PDU of a room this worker does not know: if another worker is joining the
        room, until the join is stored, or at most until JOIN_WAIT_S after it began. True if
        it waited (the room may be known now). With one process, False at once."""
        if self.hs.db.exclusive or not isinstance(room_id, str) or room_id in self._joins:
            return False
        task = self._other_joins.get(room_id)
        if task is None:
            task = self._other_joins[room_id] = asyncio.create_task(self._watch_other_join(room_id))

            def done(t: asyncio.Task[bool]) -> None:
                if self._other_joins.get(room_id) is t:
                    del self._other_joins[room_id]

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _watch_other_join(self, room_id: str) -> bool:
        clock = self.hs.clock
        async with self.hs.db.read() as conn:
            until = await remote_joins.joining_until(conn, room_id, clock.time_ms())
        if until is None:
            return False
        self.other_join_waits += 1
        done = self._join_done[room_id] = asyncio.Event()
        try:
            while until is not None and (remaining := until - clock.time_ms()) > 0:
                if await self._knows(room_id):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), min(JOIN_POLL_S, remaining / 1000))
                done.clear()
                # Gone: the join failed. Moved on: another worker is joining it too.
                async with self.hs.db.read() as conn:
                    until = await remote_joins.joining_until(conn, room_id, clock.time_ms())
        finally:
            if self._join_done.get(room_id) is done:
                del self._join_done[room_id]
        return True

    async def _knows(self, room_id: str) -> bool:
        try:
            await self.room_version_for(room_id)
        except PduError:
            return False
        return True

    async def await_room(self, room_id: Any) -> RoomVersion | None:
        """Before a PDU of a transaction is handled: wait for a join of its room under way,
        here or (with several workers) on another worker that this one hears of because it
        does not know the room. Returns the room's version, if this server knows it then."""
        await self.wait_for_join(room_id)
        if not isinstance(room_id, str):
            return None
        rv = await self.events.get_room_version(room_id)
        if rv is None and await self.wait_for_other_join(room_id):
            rv = await self.events.get_room_version(room_id)
        return rv

    async def receive(self, origin: str, pdu: Any) -> Event:
        """Process one PDU from a transaction (after `await_room`). Raises PduError (dropped)
        or EventRejected."""
        room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
        rv = await self.room_version_for(room_id)
        event = parse_pdu(pdu, rv)
        if not await self.acl_allows(event.room_id, origin):
            raise PduError(f"server {origin} is denied by the room's server ACL")
        await verify_signatures(event, self.keyring)
        await self.process(origin, event)
        return event

    async def acl_allows(self, room_id: str, server: str) -> bool:
        return await room_allows(self.events, room_id, server)

    async def process(
        self, origin: str, event: Event, *, fetch_missing: bool = True, backfilled: bool = False
    ) -> None:
        """Run the DAG checks and persist. The event's format and signatures are already checked."""
        infos = await self.tracker.get_infos([event.event_id])
        info = infos.get(event.event_id)
        if info is not None and info.state_group is not None:
            if info.rejected_reason is not None:
                raise EventRejected(info.rejected_reason)
            return
        if not backfilled:
            missing = await self._missing_prevs(event)
            if missing and fetch_missing:
                await self._fetch_missing_events(origin, event)
                missing = await self._missing_prevs(event)
            if missing:
                await self._fetch_state_at(origin, event.room_id, event.room_version, missing)
        await self._ensure_auth_events(origin, event)
        # Asked before the room lock: it may take a request to the Policy Server.
        refused = not backfilled and self.policy is not None and not await self.policy.allows_remote(event)
        async with self.hs.creator.room_lock(event.room_id):
            stream_id, rejected, derived = await self._check_and_persist(event, backfilled, refused)
        if rejected is not None:
            raise EventRejected(rejected)
        if stream_id is not None:
            users = [event.state_key] if event.type == "m.room.member" and event.state_key else []
            self.hs.notifier.notify(rooms=[event.room_id], users=users)
            await self._accepted([event], [stream_id], derived)

    async def receive_run(self, events: list[Event]) -> bool:
        """Store a run of messages from `bridge.message_runs.parse_run` in one transaction.
        False: nothing was stored, and each event needs `process`."""
        stream_ids = await persist_run(self, events)
        if stream_ids is None:
            self.runs_declined += 1
            return False
        self.runs += 1
        self.run_events += len(events)
        self.hs.notifier.notify(rooms=[events[0].room_id])
        await self._accepted(events, stream_ids, True)
        return True

    async def _accepted(self, events: list[Event], stream_ids: list[int], derived: bool) -> None:
        for event, stream_id in zip(events, stream_ids, strict=True):
            for listener in self.accepted_listeners:
                try:
                    await listener(event, stream_id, derived)
                except Exception:
                    log.exception("listener for accepted federation events failed")

    # Missing prev events ----------------------------------------------------------------------

    async def _missing_prevs(self, event: Event) -> list[str]:
        prevs = event.prev_event_ids
        infos = await self.tracker.get_infos(prevs)
        have = {e for e, i in infos.items() if i.state_group is not None}
        missing = [p for p in prevs if p not in have]
        if missing:
            # Stored events without state (e.g. from before federation was on) get it computed.
            stored = await self.events.get_pdus(missing)
            if stored:
                await self.tracker.ensure(list(stored), event.room_version)
                infos = await self.tracker.get_infos(missing)
                missing = [p for p in missing if p not in infos or infos[p].state_group is None]
        return missing

    async def _fetch_missing_events(self, origin: str, event: Event) -> None:
        extremities, _ = await self.events.get_extremities_and_depth(event.room_id)
        ext_events = await self.events.get_pdus(extremities)
        min_depth = min((e.depth for e in ext_events.values()), default=0)
        try:
            body = await self.client.post(
                origin,
                fed_path("/_matrix/federation/v1/get_missing_events/{}", event.room_id),
                {
                    "earliest_events": extremities,
                    "latest_events": [event.event_id],
                    "limit": MISSING_EVENTS_LIMIT,
                    "min_depth": min_depth,
                },
            )
        except FederationError as e:
            log.info("get_missing_events from %s failed: %s", origin, e)
            return
        fetched = body.get("events") if isinstance(body, dict) else None
        if not isinstance(fetched, list):
            return
        parsed: list[Event] = []
        for pdu in fetched[: MISSING_EVENTS_LIMIT * 2]:
            try:
                ev = parse_pdu(pdu, event.room_version)
                if ev.room_id != event.room_id:
                    continue
                await verify_signatures(ev, self.keyring)
                parsed.append(ev)
            except PduError as e:
                log.info("dropping a missing event from %s: %s", origin, e)
        for ev in sorted(parsed, key=lambda e: (e.depth, e.event_id)):
            try:
                await self.process(origin, ev, fetch_missing=False)
            except (PduError, EventRejected) as e:
                log.info("missing event %s not accepted: %s", ev.event_id, e)

    async def _fetch_state_at(self, origin: str, room_id: str, rv: RoomVersion, event_ids: list[str]) -> None:
        """Learn the state at prev events we could not fetch the history of, from `origin`."""
        for prev_id in event_ids:
            try:
                ids = await self.client.get(
                    origin,
                    fed_path("/_matrix/federation/v1/state_ids/{}", room_id),
                    query={"event_id": prev_id},
                )
                state_ids = [e for e in ids.get("pdu_ids", []) if isinstance(e, str)]
                chain_ids = [e for e in ids.get("auth_chain_ids", []) if isinstance(e, str)]
                fetched = await self.fetch_events(
                    origin, room_id, rv, set(state_ids) | set(chain_ids) | {prev_id}
                )
            except (FederationError, AttributeError) as e:
                raise PduError(f"could not fetch the state at {prev_id}: {e}") from None
            await self.store_outliers(list(fetched.values()))
            prev = fetched.get(prev_id) or (await self.events.get_pdus([prev_id])).get(prev_id)
            if prev is None:
                raise PduError(f"could not fetch prev event {prev_id}")
            state_events = await self.tracker.source.get_events(state_ids)
            before: StateMap = {
                ev.state_key_tuple: ev.event_id for ev in state_events.values() if ev.is_state()
            }
            after = dict(before)
            if prev.is_state():
                after[prev.state_key_tuple] = prev.event_id
            prepared = await self.tracker.prepare(prev, after, [])

            async def extra(conn: AsyncConnection, _sid: int, prepared: Any = prepared) -> None:
                await self.tracker.write(conn, prepared)

            await self.events.persist_federated_event(prev, outlier=True, extra=extra)
            # Already stored as an outlier: still record its state.
            infos = await self.tracker.get_infos([prev_id])
            if prev_id not in infos or infos[prev_id].state_group is None:
                async with self.hs.db.write() as conn:
                    await self.tracker.write(conn, prepared)

    # Auth events ------------------------------------------------------------------------------

    async def _ensure_auth_events(self, origin: str, event: Event) -> None:
        wanted = event.auth_event_ids
        # Through the state source's cache: the same few auth events come with every PDU.
        have = await self.tracker.source.get_events(wanted)
        missing = [e for e in wanted if e not in have]
        if not missing:
            return
        try:
            body = await self.client.get(
                origin, fed_path("/_matrix/federation/v1/event_auth/{}/{}", event.room_id, event.event_id)
            )
            chain = body.get("auth_chain", []) if isinstance(body, dict) else []
        except FederationError as e:
            log.info("event_auth from %s failed: %s", origin, e)
            chain = []
        parsed = await self.parse_and_verify(chain, event.room_id, event.room_version)
        await self.store_outliers(parsed)
        still = [e for e in missing if e not in await self.events.get_pdus(missing)]
        if still:
            fetched = await self.fetch_events(origin, event.room_id, event.room_version, still)
            await self.store_outliers(list(fetched.values()))

    async def parse_and_verify(self, pdus: Any, room_id: str, rv: RoomVersion) -> list[Event]:
        if not isinstance(pdus, list):
            return []
        out: list[Event] = []

        async def one(pdu: Any) -> None:
            try:
                ev = parse_pdu(pdu, rv)
                if ev.room_id != room_id:
                    return
                await verify_signatures(ev, self.keyring)
                out.append(ev)
            except (PduError, ValueError) as e:
                log.info("dropping an event from a remote response: %s", e)

        await _bounded_gather([one(p) for p in pdus])
        return out

    async def fetch_events(
        self, origin: str, room_id: str, rv: RoomVersion, event_ids: Collection[str]
    ) -> dict[str, Event]:
        """Fetch events we do not have from `origin` (by ID), verified."""
        have = await self.events.get_pdus(list(event_ids))
        wanted = [e for e in event_ids if e not in have]
        out: dict[str, Event] = {}

        async def one(event_id: str) -> None:
            try:
                body = await self.client.get(origin, fed_path("/_matrix/federation/v1/event/{}", event_id))
                pdus = body.get("pdus") if isinstance(body, dict) else None
                for ev in await self.parse_and_verify(pdus, room_id, rv):
                    if ev.event_id == event_id:
                        out[event_id] = ev
            except FederationError as e:
                log.info("fetching event %s from %s failed: %s", event_id, origin, e)

        await _bounded_gather([one(e) for e in wanted])
        return out

    async def store_outliers(self, fetched: list[Event]) -> None:
        """Store verified events as outliers, each checked against its own auth events."""
        if not fetched:
            return
        by_id = {e.event_id: e for e in fetched}
        known = await self.tracker.source.get_events([a for e in fetched for a in e.auth_event_ids])
        for ev in sorted(fetched, key=lambda e: (e.depth, e.event_id)):
            auth = []
            reason: str | None = None
            for aid in ev.auth_event_ids:
                a = by_id.get(aid) or known.get(aid)
                if a is None:
                    reason = f"auth event {aid} is unknown"
                    break
                auth.append(a)
            if reason is None:
                reason = await self.auth_failure(ev, auth)
            if reason is not None:
                ev.rejected_reason = reason

            async def extra(conn: AsyncConnection, _sid: int, ev: Event = ev) -> None:
                await write_outlier_status(conn, ev, ev.rejected_reason)

            await self.events.persist_federated_event(ev, outlier=True, extra=extra)

    async def auth_failure(self, event: Event, auth: list[Event]) -> str | None:
        """Why `event` fails the auth rules against its own auth events (None if it passes)."""
        return _auth_failure(event, auth, await self._create_event(event, auth))

    async def _create_event(self, event: Event, auth: list[Event]) -> Event | None:
        for a in auth:
            if a.type == "m.room.create":
                return a
        if event.type == "m.room.create":
            return event
        if event.room_version.room_id_is_create_event_hash:
            create_id = "$" + event.room_id[1:]
            return (await self.tracker.source.get_events([create_id])).get(create_id)
        return None

    # The checks and the write --------------------------------------------------------------

    async def auth_events_from_state(self, event: Event, state: StateMap) -> dict[tuple[str, str], Event]:
        keys = auth_types_for_event(
            event.room_version, event.type, event.sender, event.state_key, event.content
        )
        ids = {k: state[k] for k in keys if k in state}
        found = await self.tracker.source.get_events(list(ids.values()))
        return {k: found[v] for k, v in ids.items() if v in found}

    async def create_from_state(self, event: Event, state: StateMap) -> Event | None:
        create_id = state.get(("m.room.create", ""))
        if create_id is None and event.room_version.room_id_is_create_event_hash:
            create_id = "$" + event.room_id[1:]
        if create_id is None:
            return None
        return (await self.tracker.source.get_events([create_id])).get(create_id)

    async def _check_and_persist(
        self, event: Event, backfilled: bool, policy_refused: bool = False
    ) -> tuple[int | None, str | None, bool]:
        """(stream ID or None, why it was rejected or None, whether the batch hooks' rows
        were written with it). `policy_refused`: the room's Policy Server will not sign it
        (soft-failed if it passes the auth rules)."""
        auth_found = await self.tracker.source.get_events(event.auth_event_ids)
        auth_list = [auth_found[a] for a in event.auth_event_ids if a in auth_found]
        rejected: str | None = None
        if len(auth_list) != len(event.auth_event_ids):
            rejected = "some auth events are unknown"
        else:
            rejected = await self.auth_failure(event, auth_list)
        if backfilled:
            # History older than our join: the state before it is unknown, so it is checked
            # against its auth events only, and placed before the timeline without state.
            sticky = rejected is None and sticky_events.FIELD in event.pdu
            # A sticky one is delivered only if its sender may still send (the soft-failure
            # check); otherwise it waits, soft-failed, for the state to change (bridge.sticky).
            soft = sticky and (
                await self.current_state_failure(
                    event, await self.events.get_current_state_ids(event.room_id)
                )
                is not None
            )

            async def status(conn: AsyncConnection, _sid: int) -> None:
                await write_outlier_status(conn, event, rejected)
                if sticky:
                    # Still sticky, though old: at a fresh position, so syncs deliver it.
                    position = await self.hs.db.next_stream_id()
                    now = self.events.clock.time_ms()
                    await sticky_events.record(conn, [(event, position)], now, soft_failed=soft)

            stored = await self.events.persist_federated_event(
                event, outlier=rejected is not None, backfilled=rejected is None, extra=status
            )
            if sticky and not soft and stored is not None:
                self.hs.notifier.notify(rooms=[event.room_id])
            return None, rejected, False
        state_before = await self.tracker.state_before(event)
        if state_before is None:
            raise PduError("the state before the event is unknown")
        if rejected is None:
            auth_map = await self.auth_events_from_state(event, state_before)
            try:
                check_auth(
                    event,
                    auth_map,
                    await self.create_from_state(event, state_before),
                    validate_auth_events=False,
                )
            except AuthError as e:
                rejected = f"not allowed by the state before it: {e}"
        soft_failed = rejected is None and policy_refused
        if soft_failed:
            log.info("soft-failing %s: not signed by the room's policy server", event.event_id)
        current = await self.events.get_current_state_ids(event.room_id)
        # A sticky event soft-failed by the current state is checked again when that state
        # changes (bridge.sticky); one the Policy Server refused is not.
        sticky_soft_failed = False
        if rejected is None and not backfilled and not soft_failed:
            failure = await self.current_state_failure(event, current)
            if failure is not None:
                log.info("soft-failing %s: %s", event.event_id, failure)
                soft_failed = True
                sticky_soft_failed = self.state_changed is not None and sticky_events.FIELD in event.pdu
        state_after = dict(state_before)
        if rejected is None and event.is_state():
            state_after[event.state_key_tuple] = event.event_id
        prepared = await self.tracker.prepare(event, state_after, event.prev_event_ids)

        async def extra(conn: AsyncConnection, sid: int) -> None:
            await self.tracker.write(conn, prepared, rejected, soft_failed)
            if sticky_soft_failed:
                await sticky_events.record(
                    conn, [(event, sid)], self.events.clock.time_ms(), soft_failed=True
                )

        if rejected is not None or soft_failed:
            if rejected is not None:
                log.info("rejecting %s: %s", event.event_id, rejected)
            await self.events.persist_federated_event(event, outlier=True, extra=extra)
            # If it was already stored as an outlier, still record its status.
            async with self.hs.db.write() as conn:
                await self.tracker.write(conn, prepared, rejected, soft_failed)
            return None, rejected, False
        extremities, _ = await self.events.get_extremities_and_depth(event.room_id)
        others = [e for e in extremities if e not in set(event.prev_event_ids) and e != event.event_id]
        if not others:
            new_current = state_after
        else:
            await self.tracker.ensure(others, event.room_version)
            sets = [*list((await self.tracker.state_after(others)).values()), state_after]
            new_current = await self.tracker.resolve(event.room_version, sets, pending=[event])
        changes = await self.state_changes(current, new_current, event)
        written: list[int] = []
        # A message's push actions and search rows go in its own transaction, as a local
        # message's do: one commit, and no "late" push write to discount kept unread counts.
        message = not event.is_state() and event.type != "m.room.redaction"
        derived = await self.hs.creator.prepare_derived([event] if message else [], remote=True)

        async def write_state(conn: AsyncConnection, sid: int) -> None:
            written.append(await self.tracker.write(conn, prepared, None, False))
            await derived.write(conn, [sid])

        sid = await self.events.persist_federated_event(event, state_changes=changes, extra=write_state)
        if written:
            self.tracker.settled(event.event_id, EventStateInfo(written[0], None, False))
        if sid is None:
            return None, None, False
        derived.committed()
        if changes and self.state_changed is not None:
            try:
                await self.state_changed(event, current, changes)
            except Exception:
                log.exception("state change hook failed for %s", event.event_id)
        # The hooks ran (those with nothing to write returned no work): their listeners are done.
        return sid, None, message

    async def current_state_failure(self, event: Event, current: StateMap) -> str | None:
        """Why `event` fails the auth rules against the room's current state (None if it
        passes): the soft-failure check."""
        auth_map = await self.auth_events_from_state(event, current)
        try:
            check_auth(
                event, auth_map, await self.create_from_state(event, current), validate_auth_events=False
            )
        except AuthError as e:
            return str(e)
        return None

    async def state_changes(
        self, current: StateMap, new: StateMap, event: Event | None = None
    ) -> StateChanges:
        changed = {k: v for k, v in new.items() if current.get(k) != v}
        members = [v for k, v in changed.items() if k[0] == "m.room.member"]
        found = await self.events.get_pdus(members) if members else {}
        if event is not None:
            found[event.event_id] = event
        out: StateChanges = {}
        for k, v in changed.items():
            membership = found[v].membership if k[0] == "m.room.member" and v in found else None
            out[k] = (v, membership)
        for k in current:
            if k not in new:
                out[k] = None
        return out


def _auth_failure(event: Event, auth: list[Event], create: Event | None) -> str | None:
    """Why `event` fails the auth rules against its own auth events (None if it passes)."""
    try:
        validate_auth_event_list(event, auth)
        check_auth(event, {a.state_key_tuple: a for a in auth if a.is_state()}, create)
    except AuthError as e:
        return f"not allowed by its auth events: {e}"
    except ValueError as e:
        return f"malformed auth events: {e}"
    return None


async def _bounded_gather(coros: list[Awaitable[None]]) -> None:
    sem = asyncio.Semaphore(MAX_FETCH_CONCURRENCY)

    async def run(c: Awaitable[None]) -> None:
        async with sem:
            await c

    await asyncio.gather(*(run(c) for c in coros))
