"""Events: persisting PDUs with their effect on room state, and reading them back.

`persist_event` is the only way an event enters a room's timeline. In one
transaction it stores the PDU, advances current state and forward
extremities, records the client's transaction ID and applies redactions, so
an event is acknowledged only once all of that is durable. Queued messages
are the exception, stored a batch at a time by `persist_message_batch`
(storage/message_batches.py); remote events enter through
storage/event_federation.py. Both are mixed in here and share the room caches.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from homeserver import jsonutil
from homeserver.clock import Clock
from homeserver.events import Event, get_room_version, redact
from homeserver.events.redaction_rules import domain, redaction_applies
from homeserver.events.room_versions import RoomVersion
from homeserver.storage import sticky_events
from homeserver.storage.engine import Database
from homeserver.storage.event_federation import (
    FederatedEventWrites,
    event_row,
    insert_events,
    move_state_version,
)
from homeserver.storage.event_types import StateKey, StoredEvent, TxnInfo
from homeserver.storage.message_batches import MessageBatchWrites, advance_extremities
from homeserver.storage.room_flags import RoomFlags
from homeserver.storage.schema import (
    current_state,
    event_txns,
    events,
    forward_extremities,
    rooms,
)

__all__ = ["EventStore", "StateKey", "StoredEvent", "TxnInfo"]


class _RoomCache:
    """Auth-relevant current state and forward extremities of one room.

    `state` maps a state key to its current event, or None when known to be absent; `ids`,
    once read, is the whole current state's event IDs (federation checks every PDU against it).
    `state_version`: the room's stored state version when `room_head` last read it (several
    workers only); this process's own state changes leave it behind the stored one.
    """

    __slots__ = ("depth", "extremities", "ids", "state", "state_version")

    def __init__(self) -> None:
        self.state: dict[StateKey, StoredEvent | None] = {}
        self.extremities: list[str] | None = None
        self.depth = 0
        self.ids: dict[StateKey, str] | None = None
        self.state_version: int | None = None


# Rooms whose state is cached; least recently used rooms are dropped beyond this.
MAX_CACHED_ROOMS = 2_000


class EventStore(MessageBatchWrites, FederatedEventWrites, RoomFlags):
    def __init__(self, db: Database, *, cache_state: bool = True) -> None:
        self.db = db
        # When sticky events (MSC4354) were received; tests put the server's clock here.
        self.clock = Clock()
        # Room versions never change, so this cache needs no invalidation; it is bounded.
        self._versions: dict[str, RoomVersion] = {}
        # Called with a room's ID after the room was purged (caches kept elsewhere).
        self.purge_listeners: list[Callable[[str], None]] = []
        # `cache_state`: reads may trust the state cache, because this process is the rooms'
        # only writer (one process). With several workers it is False: the cache is still kept
        # up to date with this process's own writes, but only event creation reads it, under
        # the room lock and after `room_head` has checked it against the stored extremities.
        self.cache_state = cache_state
        self._rooms: OrderedDict[str, _RoomCache] = OrderedDict()
        # Bumped on every change to a room: a read that raced a write must not fill the cache.
        self._generation: dict[str, int] = {}
        # With several workers: told of a room whenever `room_head` finds that another worker
        # wrote to it since this one did (homeserver.forwarding counts them).
        self.foreign_write_listener: Callable[[str], None] | None = None

    # State cache -------------------------------------------------------------------------

    def _gen(self, room_id: str) -> int:
        return self._generation.get(room_id, 0)

    def _cache(self, room_id: str) -> _RoomCache | None:
        cache = self._rooms.get(room_id)
        if cache is not None:
            self._rooms.move_to_end(room_id)
        return cache

    def _cache_to_fill(self, room_id: str) -> _RoomCache:
        cache = self._cache(room_id)
        if cache is None:
            cache = self._rooms[room_id] = _RoomCache()
            if len(self._rooms) > MAX_CACHED_ROOMS:
                old, _ = self._rooms.popitem(last=False)
                self._generation.pop(old, None)
        return cache

    def drop_room_caches(self, room_id: str) -> None:
        """Forget everything cached about a room (after it is purged), here and in the
        `purge_listeners` (federation's state tracker, whose event infos name the purged
        events and their state groups)."""
        self._versions.pop(room_id, None)
        self.invalidate_room(room_id)
        for listener in self.purge_listeners:
            listener(room_id)

    def invalidate_room(self, room_id: str) -> None:
        self._generation[room_id] = self._gen(room_id) + 1
        self._rooms.pop(room_id, None)

    @asynccontextmanager
    async def _room_write(self, room_id: str) -> AsyncIterator[AsyncConnection]:
        """A write transaction that changes a room's state by paths other than persist_event."""
        self.invalidate_room(room_id)
        try:
            async with self.db.write() as conn:
                yield conn
        finally:
            self.invalidate_room(room_id)

    def _cache_new_event(self, stored: StoredEvent, *, checked: bool = False) -> None:
        """Apply an event just stored to its room's cache.

        `checked`: it was built under the room lock after `room_head`, so the cache matched
        the database when it was built. With several workers an unchecked event (one built
        elsewhere from a database read) drops the cache instead: moving stale extremities
        forward could make them equal the stored ones while the cached state stays stale."""
        event = stored.event
        room_id = event.room_id
        if event.type == "m.room.redaction" or not (self.cache_state or checked):
            # (A redacted event may be cached state.) Start afresh.
            self.invalidate_room(room_id)
            return
        self._generation[room_id] = self._gen(room_id) + 1
        cache = self._cache(room_id)
        if cache is None:
            return
        if event.is_state():
            cache.state[event.state_key_tuple] = stored
            if cache.ids is not None:
                cache.ids[event.state_key_tuple] = event.event_id
        if cache.extremities is not None:
            prevs = set(event.prev_event_ids)
            cache.extremities = [e for e in cache.extremities if e not in prevs] + [event.event_id]
            cache.depth = max(cache.depth, event.depth)

    # Rooms ---------------------------------------------------------------------------------

    async def get_room_version(self, room_id: str) -> RoomVersion | None:
        rv = self._versions.get(room_id)
        if rv is not None:
            return rv
        async with self.db.read() as conn:
            row = (await conn.execute(select(rooms.c.room_version).where(rooms.c.room_id == room_id))).first()
        if row is None:
            return None
        rv = get_room_version(row[0])
        if len(self._versions) > 50_000:
            self._versions.clear()
        self._versions[room_id] = rv
        return rv

    # Reading -------------------------------------------------------------------------------

    _cols = (
        events.c.stream_id,
        events.c.event_id,
        events.c.room_id,
        events.c.json,
        events.c.unsigned_json,
        events.c.txn_id,
        events.c.device_id,
        events.c.redacted_by,
    )

    async def _load(self, conn: AsyncConnection, query: Any) -> list[StoredEvent]:
        rows = (await conn.execute(query)).all()
        out = []
        for row in rows:
            rv = self._versions.get(row.room_id)
            if rv is None:
                vrow = (
                    await conn.execute(select(rooms.c.room_version).where(rooms.c.room_id == row.room_id))
                ).first()
                if vrow is None:
                    continue
                rv = get_room_version(vrow[0])
                self._versions[row.room_id] = rv
            out.append(
                StoredEvent(
                    event=Event(jsonutil.loads(row.json), rv, row.event_id),
                    stream_id=row.stream_id,
                    unsigned=jsonutil.loads(row.unsigned_json) if row.unsigned_json else {},
                    txn_id=row.txn_id,
                    device_id=row.device_id,
                    redacted_by=row.redacted_by,
                )
            )
        return out

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        if not event_ids:
            return {}
        async with self.db.read() as conn:
            found = await self._load(conn, select(*self._cols).where(events.c.event_id.in_(list(event_ids))))
        return {s.event.event_id: s for s in found}

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_events([event_id])).get(event_id)

    async def get_pdus(self, event_ids: Collection[str]) -> dict[str, Event]:
        """The EventSource protocol for state resolution and auth checks."""
        return {k: v.event for k, v in (await self.get_events(event_ids)).items()}

    async def events_between(
        self, after: int, upto: int, limit: int, local_suffix: str | None = None
    ) -> list[StoredEvent]:
        """The first `limit` timeline events (any room) with after < stream_id <= upto, in
        stream order: the event stream, as an application service is sent it. With
        `local_suffix` (":" + this server's name), also the out-of-band memberships of local
        users: invites (and knocks, rejections) to rooms this server is not in, which are
        stored as outliers."""
        timeline: ColumnElement[bool] = events.c.outlier.is_(False)
        if local_suffix is not None:
            out_of_band = and_(
                events.c.type == "m.room.member", events.c.state_key.endswith(local_suffix, autoescape=True)
            )
            timeline = or_(timeline, out_of_band)
        q = (
            select(*self._cols)
            .where(events.c.stream_id > after, events.c.stream_id <= upto, timeline)
            .order_by(events.c.stream_id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return await self._load(conn, q)

    async def room_events(
        self,
        room_id: str,
        *,
        after: int | None = None,
        upto: int | None = None,
        limit: int,
        backwards: bool = True,
        types: Collection[str] | None = None,
        not_types: Collection[str] | None = None,
        senders: Collection[str] | None = None,
        lower_bound: int | None = None,
        outliers: bool = False,
        min_ts: int | None = None,
        max_ts: int | None = None,
    ) -> list[StoredEvent]:
        """Timeline events with after < stream_id <= upto, newest first when backwards;
        `min_ts`/`max_ts` bound their origin_server_ts (inclusive)."""
        q = select(*self._cols).where(events.c.room_id == room_id)
        if not outliers:
            q = q.where(events.c.outlier.is_(False))
        if after is not None:
            q = q.where(events.c.stream_id > after)
        if lower_bound is not None:
            q = q.where(events.c.stream_id >= lower_bound)
        if upto is not None:
            q = q.where(events.c.stream_id <= upto)
        if types:
            q = q.where(events.c.type.in_(list(types)))
        if not_types:
            q = q.where(events.c.type.not_in(list(not_types)))
        if senders:
            q = q.where(events.c.sender.in_(list(senders)))
        if min_ts is not None:
            q = q.where(events.c.origin_server_ts >= min_ts)
        if max_ts is not None:
            q = q.where(events.c.origin_server_ts <= max_ts)
        q = q.order_by(events.c.stream_id.desc() if backwards else events.c.stream_id.asc()).limit(limit)
        async with self.db.read() as conn:
            return await self._load(conn, q)

    async def count_room_events(self, room_id: str, after: int, upto: int) -> int:
        async with self.db.read() as conn:
            value = (
                await conn.execute(
                    select(func.count())
                    .select_from(events)
                    .where(
                        events.c.room_id == room_id,
                        events.c.stream_id > after,
                        events.c.stream_id <= upto,
                        events.c.outlier.is_(False),
                    )
                )
            ).scalar()
        return int(value or 0)

    async def rooms_with_events_between(self, room_ids: Collection[str], after: int, upto: int) -> set[str]:
        if not room_ids:
            return set()
        q = (
            select(events.c.room_id)
            .distinct()
            .where(
                events.c.room_id.in_(list(room_ids)),
                events.c.stream_id > after,
                events.c.stream_id <= upto,
                events.c.outlier.is_(False),
            )
        )
        async with self.db.read() as conn:
            return {r[0] for r in await conn.execute(q)}

    async def get_relations(
        self,
        event_id: str,
        rel_type: str | None = None,
        limit: int = 50,
        before: int | None = None,
        forwards: bool = False,
        event_type: str | None = None,
    ) -> list[StoredEvent]:
        q = select(*self._cols).where(events.c.relates_to == event_id, events.c.rel_type != "m.in_reply_to")
        if rel_type:
            q = q.where(events.c.rel_type == rel_type)
        if event_type:
            q = q.where(events.c.type == event_type)
        if before is not None:
            q = q.where(events.c.stream_id > before if forwards else events.c.stream_id < before)
        q = q.order_by(events.c.stream_id.asc() if forwards else events.c.stream_id.desc()).limit(limit)
        async with self.db.read() as conn:
            return await self._load(conn, q)

    # Current state ---------------------------------------------------------------------------

    async def get_current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        if self.cache_state:
            cache = self._cache(room_id)
            if cache is not None and cache.ids is not None:
                return dict(cache.ids)
        gen = self._gen(room_id)
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(current_state.c.type, current_state.c.state_key, current_state.c.event_id).where(
                    current_state.c.room_id == room_id
                )
            )
            ids = {(r[0], r[1]): r[2] for r in rows}
        if self.cache_state and self._gen(room_id) == gen:
            self._cache_to_fill(room_id).ids = dict(ids)
        return ids

    async def get_current_state(
        self,
        room_id: str,
        keys: Iterable[StateKey] | None = None,
        types: Collection[str] | None = None,
        *,
        locked: bool = False,
    ) -> dict[StateKey, StoredEvent]:
        """The current state events at `keys` (or of `types`, or all of them).

        `locked`: the caller holds the room lock and has called `room_head` under it, so the
        cache is valid even with several workers."""
        if keys is not None and types is None and (self.cache_state or locked):
            return await self._cached_state(room_id, list(keys))
        return await self._query_current_state(room_id, keys, types)

    async def _cached_state(self, room_id: str, keys: list[StateKey]) -> dict[StateKey, StoredEvent]:
        cache = self._cache(room_id)
        out: dict[StateKey, StoredEvent] = {}
        missing: list[StateKey] = []
        for key in keys:
            if cache is not None and key in cache.state:
                hit = cache.state[key]
                if hit is not None:
                    out[key] = hit
            else:
                missing.append(key)
        if not missing:
            return out
        gen = self._gen(room_id)
        found = await self._query_current_state(room_id, missing, None)
        out.update(found)
        if self._gen(room_id) == gen:
            cache = self._cache_to_fill(room_id)
            for key in missing:
                cache.state[key] = found.get(key)
        return out

    async def _query_current_state(
        self, room_id: str, keys: Iterable[StateKey] | None, types: Collection[str] | None
    ) -> dict[StateKey, StoredEvent]:
        q = (
            select(*self._cols)
            .select_from(current_state.join(events, events.c.event_id == current_state.c.event_id))
            .where(current_state.c.room_id == room_id)
        )
        if keys is not None:
            keys = list(keys)
            if not keys:
                return {}
            q = q.where(tuple_(current_state.c.type, current_state.c.state_key).in_(keys))
        if types is not None:
            q = q.where(current_state.c.type.in_(list(types)))
        async with self.db.read() as conn:
            found = await self._load(conn, q)
        return {s.event.state_key_tuple: s for s in found}

    async def get_state_changed_since(self, room_id: str, after: int, upto: int) -> list[StoredEvent]:
        """Current state entries set in (after, upto]."""
        q = (
            select(*self._cols)
            .select_from(current_state.join(events, events.c.event_id == current_state.c.event_id))
            .where(
                current_state.c.room_id == room_id,
                current_state.c.stream_id > after,
                current_state.c.stream_id <= upto,
            )
        )
        async with self.db.read() as conn:
            return await self._load(conn, q)

    async def room_head(self, room_id: str, *, kept: bool = False) -> tuple[list[str], int]:
        """The room's forward extremities and depth, for its next event; call under the room lock.

        With several workers it also checks the room's cache against the stored room, which
        nobody else can change while the lock is held. If the room's state version differs
        from the cached one, another worker has changed its state (`move_state_version`), and
        the cache starts afresh. If only the extremities differ, another worker has stored
        messages: the cached state holds, and the head moves to the stored one. `kept`: this
        process has held the room's lock since it last used it (`Database.room_lock_kept`),
        so no other worker can have written and the cached extremities, if any, are used as
        they are. A message batch still checks them as it writes (`StaleRoomHead`)."""
        if self.cache_state:
            return await self.get_extremities_and_depth(room_id)
        cache = self._cache(room_id)
        if kept and cache is not None and cache.extremities is not None:
            return list(cache.extremities), cache.depth
        extremities, depth, version = await self._query_head(room_id)
        listener = self.foreign_write_listener
        if listener is not None and cache is not None and cache.extremities is not None:
            if set(cache.extremities) != set(extremities):
                listener(room_id)
        if cache is None or cache.extremities is None or version is None or cache.state_version != version:
            self.invalidate_room(room_id)
            cache = self._cache_to_fill(room_id)
            cache.state_version = version
        cache.extremities, cache.depth = list(extremities), depth
        return extremities, depth

    async def get_extremities_and_depth(self, room_id: str) -> tuple[list[str], int]:
        if not self.cache_state:
            return (await self._query_head(room_id))[:2]
        cache = self._cache(room_id)
        if cache is not None and cache.extremities is not None:
            return list(cache.extremities), cache.depth
        gen = self._gen(room_id)
        extremities, depth, _ = await self._query_head(room_id)
        if self._gen(room_id) == gen:
            cache = self._cache_to_fill(room_id)
            cache.extremities, cache.depth = list(extremities), depth
        return extremities, depth

    async def _query_head(self, room_id: str) -> tuple[list[str], int, int | None]:
        """The room's forward extremities (deepest first), the depth of the deepest, and the
        room's state version (None when the room has no extremities)."""
        version = select(rooms.c.state_version).where(rooms.c.room_id == room_id).scalar_subquery()
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(forward_extremities.c.event_id, events.c.depth, version)
                    .select_from(
                        forward_extremities.join(events, events.c.event_id == forward_extremities.c.event_id)
                    )
                    .where(forward_extremities.c.room_id == room_id)
                    .order_by(events.c.depth.desc())
                )
            ).all()
        if not rows:
            return [], 0, None
        return [r[0] for r in rows], int(rows[0][1]), rows[0][2]

    async def get_memberships_for_user(self, user_id: str) -> list[tuple[str, str, str, int]]:
        """(room_id, membership, event_id, stream_id) for every room the user has a member event in."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(
                    current_state.c.room_id,
                    current_state.c.membership,
                    current_state.c.event_id,
                    current_state.c.stream_id,
                ).where(current_state.c.state_key == user_id, current_state.c.type == "m.room.member")
            )
            return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def cached_membership(self, room_id: str, user_id: str) -> str | None:
        """The user's membership as this process's room cache has it, without a query; None
        if not cached. With several workers it may be stale: a hint only, for checks that
        the event creator repeats under the room lock."""
        cache = self._rooms.get(room_id)
        hit = cache.state.get(("m.room.member", user_id)) if cache is not None else None
        return None if hit is None else hit.event.membership or "leave"

    async def get_membership(self, room_id: str, user_id: str) -> tuple[str, str, int] | None:
        """(membership, event_id, stream_id) of the user's current member event, if any."""
        found = (await self.get_current_state(room_id, [("m.room.member", user_id)])).get(
            ("m.room.member", user_id)
        )
        if found is None:
            return None
        return (found.event.membership or "leave", found.event.event_id, found.stream_id)

    async def get_room_members(self, room_id: str, membership: str | None = "join") -> list[str]:
        q = select(current_state.c.state_key).where(
            current_state.c.room_id == room_id, current_state.c.type == "m.room.member"
        )
        if membership is not None:
            q = q.where(current_state.c.membership == membership)
        async with self.db.read() as conn:
            return [r[0] for r in await conn.execute(q)]

    # Writing ---------------------------------------------------------------------------------

    async def persist_event(
        self,
        event: Event,
        *,
        txn: TxnInfo | None = None,
        outlier: bool = False,
        new_room: tuple[str, str | None, int] | None = None,
        update_state: bool = True,
        checked: bool = False,
    ) -> int:
        """Store a new event and its effects; returns its stream ID. `new_room` is (version, creator, ts);
        `checked` as for `_cache_new_event`."""
        unsigned: dict[str, Any] = {}
        if outlier or not update_state:
            self.invalidate_room(event.room_id)
        async with self.db.write() as conn:
            stream_id = await self._persist(
                conn,
                event,
                txn=txn,
                outlier=outlier,
                new_room=new_room,
                update_state=update_state,
                unsigned_out=unsigned,
            )
        if outlier or not update_state:
            self.invalidate_room(event.room_id)
        else:
            self._cache_new_event(
                StoredEvent(
                    event,
                    stream_id,
                    unsigned,
                    txn.txn_id if txn else None,
                    txn.device_id if txn else None,
                    None,
                ),
                checked=checked,
            )
        return stream_id

    async def _persist(
        self,
        conn: AsyncConnection,
        event: Event,
        *,
        txn: TxnInfo | None,
        outlier: bool,
        new_room: tuple[str, str | None, int] | None,
        update_state: bool,
        unsigned_out: dict[str, Any] | None = None,
    ) -> int:
        room_id = event.room_id
        if new_room is not None:
            version, creator, ts = new_room
            await conn.execute(
                insert(rooms).values(
                    room_id=room_id, room_version=version, creator=creator, is_public=False, created_ts=ts
                )
            )
            self._versions[room_id] = event.room_version
        stream_id = await self.db.next_stream_id()
        unsigned: dict[str, Any] = {}
        replaces: str | None = None
        if event.is_state() and not outlier and update_state:
            key = event.state_key_tuple
            prev = (
                await conn.execute(
                    select(current_state.c.event_id, events.c.json)
                    .select_from(current_state.join(events, events.c.event_id == current_state.c.event_id))
                    .where(
                        current_state.c.room_id == room_id,
                        current_state.c.type == key[0],
                        current_state.c.state_key == key[1],
                    )
                )
            ).first()
            if prev is not None:
                replaces = prev[0]
                prev_pdu = jsonutil.loads(prev[1])
                unsigned = {
                    "replaces_state": replaces,
                    "prev_content": prev_pdu.get("content", {}),
                    "prev_sender": prev_pdu.get("sender"),
                }
        if unsigned_out is not None:
            unsigned_out.update(unsigned)
        row = event_row(
            event,
            stream_id,
            outlier,
            replaces_state=replaces,
            txn_id=txn.txn_id if txn else None,
            device_id=txn.device_id if txn else None,
            unsigned_json=jsonutil.dumps(unsigned) if unsigned else None,
        )
        await insert_events(conn, [row])
        if outlier:
            return stream_id
        if sticky_events.FIELD in event.pdu:
            await sticky_events.record(conn, [(event, stream_id)], self.clock.time_ms())
        if txn is not None:
            await conn.execute(
                insert(event_txns).values(
                    user_id=txn.user_id,
                    device_id=txn.device_id,
                    txn_id=txn.txn_id,
                    event_id=event.event_id,
                    created_ts=event.origin_server_ts,
                )
            )
        if event.is_state() and update_state:
            await move_state_version(conn, room_id)
            key = event.state_key_tuple
            values = dict(event_id=event.event_id, stream_id=stream_id, membership=event.membership)
            if replaces is not None:
                await conn.execute(
                    update(current_state)
                    .where(
                        current_state.c.room_id == room_id,
                        current_state.c.type == key[0],
                        current_state.c.state_key == key[1],
                    )
                    .values(**values)
                )
            else:
                await conn.execute(
                    insert(current_state).values(room_id=room_id, type=key[0], state_key=key[1], **values)
                )
        await advance_extremities(conn, room_id, event.prev_event_ids, event.event_id)
        if event.type == "m.room.member" and event.membership == "join" and event.state_key:
            await self.unforget_room(conn, event.state_key, room_id)
        if event.type == "m.room.redaction" and event.redacts:
            await self._apply_redaction(conn, event)
        return stream_id

    async def _apply_redaction(self, conn: AsyncConnection, redaction: Event) -> None:
        target_id = redaction.redacts
        if target_id is None:
            return
        target = (
            await conn.execute(select(events.c.json, events.c.room_id).where(events.c.event_id == target_id))
        ).first()
        if target is None or target[1] != redaction.room_id:
            return
        target_pdu = jsonutil.loads(target[0])
        if not await self._redaction_applies(conn, redaction, str(target_pdu.get("sender", ""))):
            return
        pruned = redact(jsonutil.loads(target[0]), redaction.room_version)
        await conn.execute(
            update(events)
            .where(events.c.event_id == target_id)
            .values(json=jsonutil.dumps(pruned), redacted_by=redaction.event_id)
        )
        if sticky_events.FIELD in target_pdu:
            await sticky_events.forget(conn, target_id)
        if "state_key" in target_pdu:
            await move_state_version(conn, redaction.room_id)  # the room's cached state may hold it

    async def _redaction_applies(self, conn: AsyncConnection, redaction: Event, target_sender: str) -> bool:
        if domain(redaction.sender) == domain(target_sender):
            return True
        rows = await conn.execute(
            select(events.c.json)
            .select_from(current_state.join(events, events.c.event_id == current_state.c.event_id))
            .where(
                current_state.c.room_id == redaction.room_id,
                tuple_(current_state.c.type, current_state.c.state_key).in_(
                    [("m.room.power_levels", ""), ("m.room.create", "")]
                ),
            )
        )
        state = {}
        for (raw,) in rows:
            ev = Event(jsonutil.loads(raw), redaction.room_version)
            state[ev.state_key_tuple] = ev
        return redaction_applies(redaction.sender, target_sender, state)
