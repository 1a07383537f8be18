"""Room state at any event: state groups, state before an event, and resolution of forks.

Every event placed in a room's DAG gets a row in `federation_event_state` pointing at the
state *after* it (a state group). Groups are stored as deltas against an earlier group,
with a full snapshot every `MAX_CHAIN` deltas, and cached in memory (bounded LRU).

The state *before* an event is the resolution (state resolution v2/v2.1) of the states
after its prev_events; a single prev needs no resolution. Events this server learnt about
before it tracked state (for example if federation was off) get their groups computed
lazily by walking back to events with known state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.schema import federation_event_state, federation_state_groups
from homeserver import jsonutil
from homeserver.events import Event
from homeserver.events.room_versions import RoomVersion
from homeserver.state import EventSource, StateMap, resolve_state
from homeserver.storage.bulk import BulkInsert
from homeserver.storage.events import EventStore

log = logging.getLogger(__name__)

# Statements of every PDU, built once.
_STATE_GROUP_OF = select(federation_event_state.c.state_group).where(
    federation_event_state.c.event_id == bindparam("event_id")
)
_INFO_COLUMNS = (
    federation_event_state.c.event_id,
    federation_event_state.c.state_group,
    federation_event_state.c.rejected_reason,
    federation_event_state.c.soft_failed,
)
# An arriving PDU (is it known?) and its one prev event.
_INFO_OF = select(*_INFO_COLUMNS).where(federation_event_state.c.event_id == bindparam("event_id"))
INSERT_EVENT_STATE = BulkInsert(
    federation_event_state, ("event_id", "room_id", "state_group", "rejected_reason", "soft_failed")
)

MAX_CHAIN = 50
_CACHE_GROUPS = 512
_CACHE_EVENTS = 5000
_CACHE_INFOS = 20000
# Outliers placed in the DAG by this process that are remembered (see StateTracker).
_MAX_PLACED = 100_000


@dataclass(slots=True)
class EventStateInfo:
    state_group: int | None
    rejected_reason: str | None
    soft_failed: bool


@dataclass(slots=True)
class PreparedState:
    """What to write for one event: either an existing group, or a new delta/snapshot."""

    event_id: str
    room_id: str
    state: StateMap
    existing_group: int | None
    prev_group: int | None
    chain_length: int
    delta: list[tuple[str, str, str]]


class StoreEventSource:
    """`EventSource` for state resolution: stored events with their rejection status.

    Keeps a bounded cache of the events it loaded: auth and state events are read again
    and again, and events never change in ways that matter here (redaction keeps every
    key the auth rules read)."""

    def __init__(self, events: EventStore, tracker: StateTracker) -> None:
        self.events = events
        self.tracker = tracker
        self._cache: OrderedDict[str, Event] = OrderedDict()

    async def get_events(self, event_ids: Collection[str]) -> dict[str, Event]:
        found: dict[str, Event] = {}
        missing = []
        for eid in event_ids:
            hit = self._cache.get(eid)
            if hit is not None:
                found[eid] = hit
            else:
                missing.append(eid)
        if missing:
            loaded = await self.events.get_pdus(missing)
            for eid, ev in loaded.items():
                self._cache[eid] = ev
            while len(self._cache) > _CACHE_EVENTS:
                self._cache.popitem(last=False)
            found.update(loaded)
        infos = await self.tracker.get_infos(list(found))
        for event_id, info in infos.items():
            if info.rejected_reason is not None:
                found[event_id].rejected_reason = info.rejected_reason
        return found


class _WithPending:
    def __init__(self, source: StoreEventSource, pending: Collection[Event]) -> None:
        self.source = source
        self.pending = {e.event_id: e for e in pending}

    async def get_events(self, event_ids: Collection[str]) -> dict[str, Event]:
        out = {e: self.pending[e] for e in event_ids if e in self.pending}
        rest = [e for e in event_ids if e not in self.pending]
        if rest:
            out.update(await self.source.get_events(rest))
        return out


class StateTracker:
    def __init__(self, events: EventStore) -> None:
        self.events = events
        self.db = events.db
        self._groups: OrderedDict[int, StateMap] = OrderedDict()
        self._group_meta: dict[int, tuple[int | None, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # event_id -> its state info, for events whose info is settled (written and committed).
        self._infos: OrderedDict[str, EventStateInfo] = OrderedDict()
        # Outliers' infos (no state group yet). After a join over federation the room's auth
        # events are outliers, and every PDU's auth checks read their rejection status. The
        # only change such a row ever sees is being placed in the DAG by `write`, which lists
        # the event in `_placed`: never cached again, since that change may not be committed
        # yet, and a read that overlapped it checks `_placed` before keeping what it read.
        # Another worker could place one unseen, so with several workers nothing is cached.
        self._outlier_infos: OrderedDict[str, EventStateInfo] = OrderedDict()
        self._placed: set[str] = set()
        self._cache_outliers = self.db.exclusive
        self.source = StoreEventSource(events, self)
        events.purge_listeners.append(self._forget_all)

    def _forget_all(self, _room_id: str) -> None:
        """After a purge: the purged events' infos name groups whose IDs SQLite may hand out
        again, to other rooms' states. Purges are rare: everything cached goes."""
        self._groups.clear()
        self._group_meta.clear()
        self._infos.clear()
        self._outlier_infos.clear()

    # Reading -----------------------------------------------------------------------------

    async def get_infos(self, event_ids: Collection[str]) -> dict[str, EventStateInfo]:
        if not event_ids:
            return {}
        out: dict[str, EventStateInfo] = {}
        ids = []
        for eid in event_ids:
            hit = self._infos.get(eid) or self._outlier_infos.get(eid)
            if hit is not None:
                out[eid] = hit
            else:
                ids.append(eid)
        if not ids:
            return out
        async with self.db.read() as conn:
            if len(ids) == 1:
                self._take(await conn.execute(_INFO_OF, {"event_id": ids[0]}), out)
                return out
            for i in range(0, len(ids), 500):
                query = select(*_INFO_COLUMNS).where(federation_event_state.c.event_id.in_(ids[i : i + 500]))
                self._take(await conn.execute(query), out)
        return out

    def _take(self, rows: Iterable[Sequence[Any]], out: dict[str, EventStateInfo]) -> None:
        for r in rows:
            info = EventStateInfo(None if r[1] is None else int(r[1]), r[2], bool(r[3]))
            out[r[0]] = info
            if info.state_group is not None:
                self._remember_info(r[0], info)
            elif self._cache_outliers and r[0] not in self._placed:
                self._outlier_infos[r[0]] = info
                if len(self._outlier_infos) > _CACHE_INFOS:
                    self._outlier_infos.popitem(last=False)

    def _remember_info(self, event_id: str, info: EventStateInfo) -> None:
        self._infos[event_id] = info
        self._infos.move_to_end(event_id)
        while len(self._infos) > _CACHE_INFOS:
            self._infos.popitem(last=False)

    def settled(self, event_id: str, info: EventStateInfo) -> None:
        """Cache an event's info once the transaction that wrote it has committed."""
        if info.state_group is not None:
            self._remember_info(event_id, info)

    async def load_group(self, group: int) -> StateMap:
        cached = self._groups.get(group)
        if cached is not None:
            self._groups.move_to_end(group)
            return cached
        chain: list[tuple[int, list[list[str]]]] = []
        base: StateMap = {}
        current: int | None = group
        async with self.db.read() as conn:
            while current is not None:
                hit = self._groups.get(current)
                if hit is not None:
                    base = dict(hit)
                    break
                row = (
                    await conn.execute(
                        select(
                            federation_state_groups.c.prev_group,
                            federation_state_groups.c.chain_length,
                            federation_state_groups.c.delta_json,
                        ).where(federation_state_groups.c.id == current)
                    )
                ).first()
                if row is None:
                    raise KeyError(f"unknown state group {current}")
                self._group_meta[current] = (row[0], int(row[1]))
                chain.append((current, jsonutil.loads(row[2])))
                current = row[0]
        state = base
        for gid, delta in reversed(chain):
            state = dict(state)
            for t, sk, eid in delta:
                state[(t, sk)] = eid
            self._cache(gid, state)
        return state

    def _cache(self, group: int, state: StateMap) -> None:
        self._groups[group] = state
        self._groups.move_to_end(group)
        while len(self._groups) > _CACHE_GROUPS:
            old, _ = self._groups.popitem(last=False)
            self._group_meta.pop(old, None)

    async def state_after(self, event_ids: Collection[str]) -> dict[str, StateMap]:
        """State after each event that has known state (others are absent)."""
        infos = await self.get_infos(event_ids)
        return {
            eid: await self.load_group(info.state_group)
            for eid, info in infos.items()
            if info.state_group is not None
        }

    async def resolve(
        self, room_version: RoomVersion, state_sets: list[StateMap], pending: Collection[Event] = ()
    ) -> StateMap:
        """Resolve state sets; `pending` are events not stored yet (the one being persisted)."""
        unique: list[StateMap] = []
        for s in state_sets:
            if s not in unique:
                unique.append(s)
        if len(unique) == 1:
            return dict(unique[0])
        if not unique:
            return {}
        source: EventSource = self.source if not pending else _WithPending(self.source, pending)
        return await resolve_state(room_version, unique, source)

    async def state_before(self, event: Event) -> StateMap | None:
        """Resolved state before `event`, or None if some prev event's state is unknown."""
        prevs = event.prev_event_ids
        if not prevs:
            return {}
        await self.ensure(prevs, event.room_version)
        after = await self.state_after(prevs)
        if len(after) != len(set(prevs)):
            return None
        return await self.resolve(event.room_version, list(after.values()))

    # Writing ------------------------------------------------------------------------------

    async def prepare(self, event: Event, state: StateMap, base_event_ids: list[str]) -> PreparedState:
        """Plan how to store `state` (the state after `event`), as a delta on a prev's group."""
        infos = await self.get_infos(base_event_ids)
        best: PreparedState | None = None
        for eid in base_event_ids:
            info = infos.get(eid)
            if info is None or info.state_group is None:
                continue
            base = await self.load_group(info.state_group)
            if base == state:
                return PreparedState(event.event_id, event.room_id, state, info.state_group, None, 0, [])
            if any(k not in state for k in base):
                continue
            meta = self._group_meta.get(info.state_group)
            chain = meta[1] if meta else MAX_CHAIN
            delta = [(k[0], k[1], v) for k, v in state.items() if base.get(k) != v]
            if chain + 1 < MAX_CHAIN and (best is None or len(delta) < len(best.delta)):
                best = PreparedState(
                    event.event_id, event.room_id, state, None, info.state_group, chain + 1, delta
                )
        if best is not None:
            return best
        snapshot = [(k[0], k[1], v) for k, v in state.items()]
        return PreparedState(event.event_id, event.room_id, state, None, None, 0, snapshot)

    async def write(
        self,
        conn: AsyncConnection,
        prepared: PreparedState,
        rejected_reason: str | None = None,
        soft_failed: bool = False,
        *,
        fresh: bool = False,
    ) -> int:
        """Write the group (if new) and the event's row; inside the caller's transaction.
        `fresh`: the event was just created here, so it has no row yet (not even as an outlier)."""
        group = prepared.existing_group
        if group is None:
            result = await conn.execute(
                insert(federation_state_groups)
                .values(
                    room_id=prepared.room_id,
                    prev_group=prepared.prev_group,
                    chain_length=prepared.chain_length,
                    delta_json=jsonutil.dumps([list(d) for d in sorted(prepared.delta)]),
                )
                .returning(federation_state_groups.c.id)
            )
            group = int(result.scalar_one())
            # Cached at once: an ID handed out again (SQLite reuses a rolled-back or purged
            # row's) is cached again by the write that gets it.
            self._group_meta[group] = (prepared.prev_group, prepared.chain_length)
            self._cache(group, dict(prepared.state))
        existing = None
        if not fresh:
            existing = (await conn.execute(_STATE_GROUP_OF, {"event_id": prepared.event_id})).first()
        if existing is not None and existing[0] is None:
            # An outlier that has now been placed in the DAG.
            self._outlier_infos.pop(prepared.event_id, None)
            if len(self._placed) < _MAX_PLACED:
                self._placed.add(prepared.event_id)
            else:
                self._cache_outliers = False  # rather than forget what must not be cached
            await conn.execute(
                update(federation_event_state)
                .where(federation_event_state.c.event_id == prepared.event_id)
                .values(state_group=group, rejected_reason=rejected_reason, soft_failed=soft_failed)
            )
        elif existing is None:
            row = (prepared.event_id, prepared.room_id, group, rejected_reason, soft_failed)
            await INSERT_EVENT_STATE.run(conn, [row])
        return group

    async def write_run(self, conn: AsyncConnection, prepared: PreparedState, more: list[str]) -> int:
        """`write` a new event's state, and give the events in `more`, new too and
        changing no state, the same group (`bridge.message_runs`)."""
        group = await self.write(conn, prepared, fresh=True)
        await INSERT_EVENT_STATE.run(conn, [(e, prepared.room_id, group, None, False) for e in more])
        return group

    async def record(
        self, event: Event, state: StateMap, rejected_reason: str | None = None, soft_failed: bool = False
    ) -> int:
        prepared = await self.prepare(event, state, event.prev_event_ids)
        async with self.db.write() as conn:
            group = await self.write(conn, prepared, rejected_reason, soft_failed)
        self.settled(event.event_id, EventStateInfo(group, rejected_reason, soft_failed))
        return group

    def room_lock(self, room_id: str) -> asyncio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            if len(self._locks) > 10_000:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[room_id] = asyncio.Lock()
        return lock

    async def ensure(self, event_ids: Collection[str], room_version: RoomVersion) -> None:
        """Compute and store state groups for stored events that lack them (walking back)."""
        infos = await self.get_infos(event_ids)
        missing = [e for e in event_ids if e not in infos or infos[e].state_group is None]
        if not missing:
            return
        # Collect the unknown region of the DAG, then fill it in depth order.
        todo: dict[str, Event] = {}
        frontier = list(missing)
        while frontier and len(todo) < 10_000:
            found = await self.events.get_pdus(frontier)
            next_frontier: list[str] = []
            for eid, ev in found.items():
                if eid in todo:
                    continue
                todo[eid] = ev
                next_frontier.extend(ev.prev_event_ids)
            known = await self.get_infos(next_frontier)
            frontier = [
                e
                for e in set(next_frontier)
                if (e not in known or known[e].state_group is None) and e not in todo
            ]
        for ev in sorted(todo.values(), key=lambda e: (e.depth, e.event_id)):
            before = await self.state_before_known(ev)
            if before is None:
                continue
            after = dict(before)
            if ev.is_state():
                after[ev.state_key_tuple] = ev.event_id
            await self.record(ev, after)

    async def state_before_known(self, event: Event) -> StateMap | None:
        prevs = event.prev_event_ids
        if not prevs:
            return {}
        after = await self.state_after(prevs)
        if not after:
            return None
        return await self.resolve(event.room_version, list(after.values()))


async def write_outlier_status(conn: AsyncConnection, event: Event, rejected_reason: str | None) -> None:
    """Remember an outlier's rejection (auth chain events have no state group)."""
    exists = (
        await conn.execute(
            select(federation_event_state.c.event_id).where(
                federation_event_state.c.event_id == event.event_id
            )
        )
    ).first()
    if exists is None:
        await conn.execute(
            insert(federation_event_state).values(
                event_id=event.event_id,
                room_id=event.room_id,
                state_group=None,
                rejected_reason=rejected_reason,
                soft_failed=False,
            )
        )
