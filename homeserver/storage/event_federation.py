"""How remote events enter rooms (for bridge/): mixed into EventStore.

Each method is one transaction through EventStore's own `_persist` and `_room_write`, so a
remote event changes state, extremities and caches exactly as a local one does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver import jsonutil
from homeserver.events import Event
from homeserver.events.room_versions import RoomVersion
from homeserver.storage.bulk import BulkInsert
from homeserver.storage.schema import current_state, events, forward_extremities, rooms

if TYPE_CHECKING:
    from homeserver.storage.engine import Database
    from homeserver.storage.events import StateKey, StoredEvent, TxnInfo


# The widths of the `events` columns holding a relation: a longer value makes no relation (an
# event ID has at most 255 characters; relation types are short), where SQLite would store
# it whole and PostgreSQL cut it.
MAX_REL_TYPE = 64
MAX_EVENT_ID = 255


def event_relation(event: Event) -> tuple[str | None, str | None]:
    """(rel_type, target event ID) of an event's m.relates_to (replies count as m.in_reply_to)."""
    rel = event.content.get("m.relates_to")
    if isinstance(rel, dict):
        rel_type = rel.get("rel_type")
        target = rel.get("event_id")
        if isinstance(target, str):
            if len(target) > MAX_EVENT_ID or (isinstance(rel_type, str) and len(rel_type) > MAX_REL_TYPE):
                return None, None
            return (rel_type if isinstance(rel_type, str) else None), target
        reply = rel.get("m.in_reply_to")
        if (
            isinstance(reply, dict)
            and isinstance(target := reply.get("event_id"), str)
            and len(target) <= MAX_EVENT_ID
        ):
            return "m.in_reply_to", target
    return None, None


# One event's `events` row, compiled once (see BulkInsert): every event written one at a
# time (state, federation, redactions) goes through it.
_INSERT_EVENT = BulkInsert(
    events,
    (
        "stream_id",
        "event_id",
        "room_id",
        "type",
        "state_key",
        "sender",
        "depth",
        "origin_server_ts",
        "json",
        "rel_type",
        "relates_to",
        "outlier",
        "replaces_state",
        "txn_id",
        "device_id",
        "unsigned_json",
    ),
)


# A room's current state: a row per key, replaced whole (the key's event, membership and
# position), and a key removed; in bulk, for a join's thousands of keys.
_UPSERT_STATE = BulkInsert(
    current_state,
    ("room_id", "type", "state_key", "event_id", "membership", "stream_id"),
    upsert_keys=("room_id", "type", "state_key"),
)
_DELETE_STATE = delete(current_state).where(
    current_state.c.room_id == bindparam("room"),
    current_state.c.type == bindparam("etype"),
    current_state.c.state_key == bindparam("skey"),
)

_OUTLIER_FLAG = select(events.c.outlier).where(events.c.event_id == bindparam("event_id"))


_MOVE_STATE_VERSION = (
    update(rooms).where(rooms.c.room_id == bindparam("room")).values(state_version=rooms.c.state_version + 1)
)


async def move_state_version(conn: AsyncConnection, room_id: str) -> None:
    """Mark a change to the room's current state (or a redacted state event), in the
    transaction making it: workers' cached auth state of the room is then read afresh
    (`EventStore.room_head`)."""
    await conn.execute(_MOVE_STATE_VERSION, {"room": room_id})


async def insert_events(conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
    """Write events' `events` rows (`event_row`), in one statement."""
    await _INSERT_EVENT.run(conn, rows)


def event_row(
    event: Event,
    stream_id: int,
    outlier: bool,
    replaces_state: str | None = None,
    txn_id: str | None = None,
    device_id: str | None = None,
    unsigned_json: str | None = None,
) -> tuple[Any, ...]:
    """An event's `events` row: the columns every writer sets, plus the writer's own."""
    rel_type, relates_to = event_relation(event)
    return (
        stream_id,
        event.event_id,
        event.room_id,
        event.type,
        event.state_key,
        event.sender,
        event.depth,
        event.origin_server_ts,
        jsonutil.dumps(event.pdu),
        rel_type,
        relates_to,
        outlier,
        replaces_state,
        txn_id,
        device_id,
        unsigned_json,
    )


class FederatedEventWrites:
    if TYPE_CHECKING:
        # Provided by EventStore.
        _versions: dict[str, RoomVersion]

        db: Database

        def _room_write(self, room_id: str) -> AbstractAsyncContextManager[AsyncConnection]: ...

        def _cache_new_event(self, stored: StoredEvent, *, checked: bool = False) -> None: ...

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
        ) -> int: ...

        async def unforget_room_for(
            self, conn: AsyncConnection, room_id: str, user_ids: list[str]
        ) -> None: ...

    # Federation (bridge/) ------------------------------------------------------------------
    # Remote events enter rooms here. Each method is one transaction; `extra` lets the caller
    # write its own rows (state groups, rejections) atomically with the event.

    async def _promote_outlier(self, conn: AsyncConnection, event_id: str) -> bool:
        """Drop a stored outlier copy so the event can be stored as part of the timeline.
        Returns False if the event is already stored as a timeline event."""
        row = (await conn.execute(_OUTLIER_FLAG, {"event_id": event_id})).first()
        if row is None:
            return True
        if not row[0]:
            return False
        await conn.execute(delete(events).where(events.c.event_id == event_id))
        return True

    async def persist_federated_event(
        self,
        event: Event,
        *,
        outlier: bool = False,
        backfilled: bool = False,
        state_changes: dict[StateKey, tuple[str, str | None] | None] | None = None,
        extra: Callable[[AsyncConnection, int], Awaitable[None]] | None = None,
    ) -> int | None:
        """Store a remote event. Returns its stream ID, or None if it was already stored.

        `state_changes` maps state keys to (event_id, membership) — or None to remove the
        key — and is applied to current_state after the event itself (which never updates
        current_state on its own here). Backfilled events get negative stream positions so
        they sort before the live timeline and never show up in incremental syncs.
        """
        # A timeline event that changes no state (most of what arrives) updates the room's
        # cache as a local one does (`_cache_new_event`: extremities move forward, and a
        # redaction drops the cache); anything else may change state, so the cache starts afresh.
        plain = not outlier and not backfilled and not state_changes and not event.is_state()
        async with self.db.write() if plain else self._room_write(event.room_id) as conn:
            stream_id = await self._write_federated_event(
                conn, event, outlier, backfilled, state_changes, extra
            )
        if plain and stream_id is not None:
            from homeserver.storage.events import StoredEvent  # here: events imports this module

            self._cache_new_event(StoredEvent(event, stream_id, {}, None, None, None))
        return stream_id

    async def _write_federated_event(
        self,
        conn: AsyncConnection,
        event: Event,
        outlier: bool,
        backfilled: bool,
        state_changes: dict[StateKey, tuple[str, str | None] | None] | None,
        extra: Callable[[AsyncConnection, int], Awaitable[None]] | None,
    ) -> int | None:
        if outlier:
            exists = (
                await conn.execute(select(events.c.stream_id).where(events.c.event_id == event.event_id))
            ).first()
            if exists is not None:
                return None
        elif not await self._promote_outlier(conn, event.event_id):
            return None
        if backfilled:
            lowest = (await conn.execute(select(func.min(events.c.stream_id)))).scalar()
            stream_id = min(int(lowest or 0), 0) - 1
            await insert_events(conn, [event_row(event, stream_id, False)])
        else:
            stream_id = await self._persist(
                conn, event, txn=None, outlier=outlier, new_room=None, update_state=False
            )
        if not outlier and not backfilled and event.is_state() and state_changes is not None:
            # Record what the event replaced, as local state events do, for /sync's state walk.
            key = event.state_key_tuple
            if key in state_changes:
                prev = (
                    await conn.execute(
                        select(current_state.c.event_id).where(
                            current_state.c.room_id == event.room_id,
                            current_state.c.type == key[0],
                            current_state.c.state_key == key[1],
                        )
                    )
                ).first()
                if prev is not None and prev[0] != event.event_id:
                    await conn.execute(
                        update(events)
                        .where(events.c.event_id == event.event_id)
                        .values(
                            replaces_state=prev[0],
                            unsigned_json=jsonutil.dumps({"replaces_state": prev[0]}),
                        )
                    )
        if state_changes:
            await self._apply_state_changes(conn, event.room_id, state_changes, stream_id)
        if extra is not None:
            await extra(conn, stream_id)
        return stream_id

    async def _apply_state_changes(
        self,
        conn: AsyncConnection,
        room_id: str,
        changes: dict[StateKey, tuple[str, str | None] | None],
        stream_id: int,
    ) -> None:
        if not changes:
            return
        await move_state_version(conn, room_id)
        rows = []
        joined = []
        for (etype, skey), value in changes.items():
            if value is None:
                await conn.execute(_DELETE_STATE, {"room": room_id, "etype": etype, "skey": skey})
                continue
            event_id, membership = value
            rows.append((room_id, etype, skey, event_id, membership, stream_id))
            if etype == "m.room.member" and membership == "join":
                joined.append(skey)
        # Sorted by key: concurrent writers then lock rows in one order.
        rows.sort(key=lambda r: (r[1], r[2]))
        await _UPSERT_STATE.run(conn, rows)
        await self.unforget_room_for(conn, room_id, joined)

    async def persist_remote_join(
        self,
        join_event: Event,
        outliers: list[Event],
        state: dict[StateKey, tuple[str, str | None]],
        created_ts: int,
        extra: Callable[[AsyncConnection, int], Awaitable[None]] | None = None,
    ) -> int:
        """Store a room joined over federation: the returned state and auth chain (as
        outliers), the room's current state (`state` plus the join) and the join event as
        the room's only forward extremity."""
        room_id = join_event.room_id
        rv = join_event.room_version
        async with self._room_write(room_id) as conn:
            known = (await conn.execute(select(rooms.c.room_id).where(rooms.c.room_id == room_id))).first()
            if known is None:
                create_sender = next((e.sender for e in outliers if e.type == "m.room.create"), None)
                await conn.execute(
                    insert(rooms).values(
                        room_id=room_id,
                        room_version=rv.identifier,
                        creator=create_sender,
                        is_public=False,
                        created_ts=created_ts,
                    )
                )
            self._versions[room_id] = rv
            have = {
                r[0]
                for r in await conn.execute(
                    select(events.c.event_id).where(events.c.event_id.in_([e.event_id for e in outliers]))
                )
            }
            new = []
            for ev in outliers:
                if ev.event_id in have or ev.event_id == join_event.event_id:
                    continue
                have.add(ev.event_id)
                new.append(ev)
            ids = await self.db.next_stream_ids(len(new)) if new else []
            await insert_events(conn, [event_row(ev, sid, True) for ev, sid in zip(new, ids, strict=True)])
            await conn.execute(delete(forward_extremities).where(forward_extremities.c.room_id == room_id))
            await self._promote_outlier(conn, join_event.event_id)
            stream_id = await self._persist(
                conn, join_event, txn=None, outlier=False, new_room=None, update_state=False
            )
            await conn.execute(
                delete(forward_extremities).where(
                    forward_extremities.c.room_id == room_id,
                    forward_extremities.c.event_id != join_event.event_id,
                )
            )
            full = dict(state)
            full[join_event.state_key_tuple] = (join_event.event_id, "join")
            existing = {
                (r[0], r[1])
                for r in await conn.execute(
                    select(current_state.c.type, current_state.c.state_key).where(
                        current_state.c.room_id == room_id
                    )
                )
            }
            changes: dict[StateKey, tuple[str, str | None] | None] = {k: None for k in existing - set(full)}
            changes.update(full)
            await self._apply_state_changes(conn, room_id, changes, stream_id)
            if extra is not None:
                await extra(conn, stream_id)
            return stream_id

    async def persist_remote_membership(
        self,
        event: Event,
        *,
        set_membership: bool,
        created_ts: int,
        extra: Callable[[AsyncConnection, int], Awaitable[None]] | None = None,
    ) -> int | None:
        """Store an invite (or the leave that rejects it) for a room this server is not in:
        the event as an outlier, the room's row if new, and the user's membership so /sync
        shows it. Returns the stream ID, or None if the event was already stored."""
        room_id = event.room_id
        async with self._room_write(room_id) as conn:
            known = (await conn.execute(select(rooms.c.room_id).where(rooms.c.room_id == room_id))).first()
            if known is None:
                await conn.execute(
                    insert(rooms).values(
                        room_id=room_id,
                        room_version=event.room_version.identifier,
                        creator=None,
                        is_public=False,
                        created_ts=created_ts,
                    )
                )
            self._versions[room_id] = event.room_version
            exists = (
                await conn.execute(select(events.c.stream_id).where(events.c.event_id == event.event_id))
            ).first()
            if exists is not None:
                return None
            stream_id = await self._persist(
                conn, event, txn=None, outlier=True, new_room=None, update_state=False
            )
            if set_membership and event.state_key is not None:
                await self._apply_state_changes(
                    conn, room_id, {event.state_key_tuple: (event.event_id, event.membership)}, stream_id
                )
            if extra is not None:
                await extra(conn, stream_id)
            return stream_id
