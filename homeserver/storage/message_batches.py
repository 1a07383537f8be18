"""Group-committed messages (the send path): a room's queued messages stored in one
transaction, and the client transaction IDs that deduplicate them. Mixed into EventStore.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver import jsonutil
from homeserver.events import Event
from homeserver.storage import sticky_events
from homeserver.storage.bulk import BulkInsert, columns_of
from homeserver.storage.event_federation import event_relation
from homeserver.storage.event_types import StoredEvent, TxnInfo
from homeserver.storage.schema import event_txns, events, forward_extremities

if TYPE_CHECKING:
    from homeserver.clock import Clock
    from homeserver.storage.engine import Database

# Statements of the message write path, built once (executed with a list of rows each).
# The columns a message sets (state_key, replaces_state and unsigned_json stay NULL).
_INSERT_MESSAGES = BulkInsert(
    events,
    (
        "stream_id",
        "event_id",
        "room_id",
        "type",
        "sender",
        "depth",
        "origin_server_ts",
        "json",
        "rel_type",
        "relates_to",
        "outlier",
        "txn_id",
        "device_id",
    ),
)
_TXN_COLUMNS = ("user_id", "device_id", "txn_id", "event_id", "created_ts")
_INSERT_TXNS = BulkInsert(event_txns, _TXN_COLUMNS)
_INSERT_NEW_TXNS = BulkInsert(event_txns, _TXN_COLUMNS, skip_existing=True)
_INSERT_EXTREMITY = insert(forward_extremities)
_DELETE_EXTREMITIES = delete(forward_extremities).where(
    forward_extremities.c.room_id == bindparam("room_id"),
    forward_extremities.c.event_id.in_(bindparam("event_ids", expanding=True)),
)
# The usual case, one extremity replaced by the batch's last event: one statement, not two.
_REPLACE_EXTREMITY = (
    update(forward_extremities)
    .where(
        forward_extremities.c.room_id == bindparam("in_room"),
        forward_extremities.c.event_id == bindparam("old_id"),
    )
    .values(event_id=bindparam("new_id"))
)

# PostgreSQL, one prev extremity (the usual case): the transaction IDs' insert and the
# extremity's replacement in one round trip, counting what each did.
_CLAIM_PG = (
    f"WITH t AS ({_INSERT_NEW_TXNS.unnest_sql(1)} RETURNING 1), "
    "x AS (UPDATE forward_extremities SET event_id = $6 WHERE room_id = $7 AND event_id = $8 RETURNING 1) "
    "SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM x)"
)


# At most this many transaction IDs are looked up in one statement.
_TXN_LOOKUP_MAX = 64


@functools.lru_cache(maxsize=_TXN_LOOKUP_MAX)
def _txn_lookup(n: int) -> Any:
    """The event IDs of n (user, device, txn) keys, bound as u0, d0, t0, u1 ...

    An OR of primary-key equalities: SQLite answers it with one index search per key
    (MULTI-INDEX OR), where a row-value IN list made it scan the whole table."""
    t = event_txns.c
    return select(t.user_id, t.device_id, t.txn_id, t.event_id).where(
        or_(
            *[
                and_(
                    t.user_id == bindparam(f"u{i}"),
                    t.device_id == bindparam(f"d{i}"),
                    t.txn_id == bindparam(f"t{i}"),
                )
                for i in range(n)
            ]
        )
    )


class DuplicateTxn(Exception):
    """A message batch held a transaction ID that is already stored (a client's retry)."""


class StaleRoomHead(Exception):
    """A message batch was built on forward extremities that are no longer all there: the
    room's cache was out of date. Nothing was written; build the batch again."""


async def advance_extremities(conn: AsyncConnection, room_id: str, prevs: list[str], event_id: str) -> int:
    """`event_id` becomes a forward extremity and its prev events stop being ones. With one
    prev that is an extremity (the usual case) that is one UPDATE. Returns how many of the
    prevs were extremities."""
    distinct = list(dict.fromkeys(prevs))
    replaced = 0
    if len(distinct) == 1:
        params: dict[str, Any] = {"in_room": room_id, "old_id": distinct[0], "new_id": event_id}
        if (await conn.execute(_REPLACE_EXTREMITY, params)).rowcount == 1:
            return 1
    elif distinct:
        params = {"room_id": room_id, "event_ids": distinct}
        replaced = (await conn.execute(_DELETE_EXTREMITIES, params)).rowcount
    await conn.execute(_INSERT_EXTREMITY, {"room_id": room_id, "event_id": event_id})
    return int(replaced)


class MessageBatchWrites:
    if TYPE_CHECKING:
        # Provided by EventStore.
        db: Database
        clock: Clock

        def _cache_new_event(self, stored: StoredEvent, *, checked: bool = False) -> None: ...

    async def persist_message_batch(
        self,
        batch: list[tuple[Event, TxnInfo | None]],
        extra: Callable[[AsyncConnection, list[int]], Awaitable[None]] | None = None,
        gather: bool = False,
        txns_checked: bool = True,
    ) -> list[int]:
        """Store a chain of non-state events in one transaction (group commit), built under
        the room lock after `room_head` (the event creator's batches). `gather`: see
        `Database.write`. Unless `txns_checked` (the caller looked the transaction IDs up
        first, `get_txn_events`), a transaction ID already stored raises `DuplicateTxn` and
        nothing is written (the INSERT counts the rows it skipped).

        Each event's prev_events is the previous one, so only the first event's prevs stop
        being forward extremities and only the last becomes one. `extra(conn, stream_ids)`
        writes the batch's derived rows (push actions, search index) in the same transaction.
        """
        if not batch:
            return []
        room_id = batch[0][0].room_id
        assert all(
            e.room_id == room_id and not e.is_state() and e.type != "m.room.redaction" for e, _ in batch
        )
        rows = []
        txn_rows = []
        for event, txn in batch:
            rel_type, relates_to = event_relation(event)
            rows.append(
                [
                    0,  # stream_id, allocated in the transaction
                    event.event_id,
                    room_id,
                    event.type,
                    event.sender,
                    event.depth,
                    event.origin_server_ts,
                    jsonutil.dumps(event.pdu),
                    rel_type,
                    relates_to,
                    False,
                    txn.txn_id if txn else None,
                    txn.device_id if txn else None,
                ]
            )
            if txn is not None:
                txn_rows.append(
                    (txn.user_id, txn.device_id, txn.txn_id, event.event_id, event.origin_server_ts)
                )
        # Only the first event's prevs stop being extremities (the rest chain on it).
        prevs = list(dict.fromkeys(batch[0][0].prev_event_ids))
        async with self.db.write(gather, defer=True) as conn:
            ids = await self.db.next_stream_ids(len(batch))
            for row, stream_id in zip(rows, ids, strict=True):
                row[0] = stream_id
            await self.db.insert(conn, _INSERT_MESSAGES, [tuple(row) for row in rows])
            last_id = batch[-1][0].event_id
            if len(prevs) == 1 and conn.dialect.name == "postgresql":
                arrays: tuple[list[Any], ...] = columns_of(txn_rows) or ([],) * len(_TXN_COLUMNS)
                claim = (*arrays, last_id, room_id, prevs[0])
                counts: Any = (await conn.exec_driver_sql(_CLAIM_PG, claim)).one()
                replaced = counts[1]
                if counts[0] != len(txn_rows):
                    raise DuplicateTxn
            else:
                if txns_checked:
                    await _INSERT_TXNS.run(conn, txn_rows)
                elif await _INSERT_NEW_TXNS.run(conn, txn_rows) != len(txn_rows):
                    raise DuplicateTxn
                replaced = await advance_extremities(conn, room_id, prevs, last_id)
            if replaced != len(prevs):
                # The batch cites an event that is no longer an extremity: it was built
                # on a stale view of the room (see EventStore.room_head).
                raise StaleRoomHead
            if extra is not None:
                await extra(conn, ids)
            # Remote runs may hold sticky events (local ones are not batched: EventCreator).
            sticky = [
                (e, sid) for (e, _), sid in zip(batch, ids, strict=True) if sticky_events.FIELD in e.pdu
            ]
            if sticky:
                await sticky_events.record(conn, sticky, self.clock.time_ms())
        for (event, txn), stream_id in zip(batch, ids, strict=True):
            self._cache_new_event(
                StoredEvent(
                    event, stream_id, {}, txn.txn_id if txn else None, txn.device_id if txn else None, None
                ),
                checked=True,
            )
        return ids

    async def get_txn_events(self, txns: list[TxnInfo]) -> dict[tuple[str, str, str], str]:
        """Event IDs already recorded for these (user, device, txn) triples."""
        if not txns:
            return {}
        keys = list({(t.user_id, t.device_id, t.txn_id) for t in txns})
        found: dict[tuple[str, str, str], str] = {}
        async with self.db.read() as conn:
            for start in range(0, len(keys), _TXN_LOOKUP_MAX):
                chunk = keys[start : start + _TXN_LOOKUP_MAX]
                params = {
                    f"{c}{i}": v for i, key in enumerate(chunk) for c, v in zip("udt", key, strict=True)
                }
                for r in await conn.execute(_txn_lookup(len(chunk)), params):
                    found[(r[0], r[1], r[2])] = r[3]
        return found

    async def get_txn_event(self, txn: TxnInfo) -> str | None:
        return (await self.get_txn_events([txn])).get((txn.user_id, txn.device_id, txn.txn_id))
