"""Federation storage: the outbound queue, destination retry state and received transactions.

One method, one transaction. The outbox is append-only from the senders' point of view:
rows are deleted only after the destination acknowledged them (see bridge.queue).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.schema import (
    federation_destination_rooms,
    federation_destinations,
    federation_outbox,
    federation_received_txns,
)
from homeserver import jsonutil
from homeserver.storage.bulk import BulkInsert
from homeserver.storage.engine import Database
from homeserver.storage.schema import events
from homeserver.storage.sqlutil import dialect_insert

# Received transactions' responses are kept this long (a sender retries for far less).
TXN_KEEP_MS = 7 * 24 * 3600 * 1000
TXN_SWEEP_INTERVAL_MS = 600_000

_INSERT_OUTBOX = BulkInsert(federation_outbox, ("destination", "kind", "event_id", "edu_json", "created_ts"))
_INSERT_TXN_RESPONSE = BulkInsert(
    federation_received_txns, ("origin", "txn_id", "response_json", "received_ts"), skip_existing=True
)


@dataclass(slots=True)
class OutboxBatch:
    row_ids: list[int]
    event_ids: list[str]
    edus: list[dict[str, Any]]


@dataclass(slots=True)
class RetryState:
    failures: int
    retry_interval_ms: int
    next_retry_ts: int


@dataclass(slots=True)
class Destination:
    """A server this one has sent to, as the admin API describes it."""

    destination: str
    failures: int
    retry_interval_ms: int
    next_retry_ts: int
    failure_ts: int | None
    last_delivered: int | None  # events.stream_id of the newest event it acknowledged

    @classmethod
    def of(cls, row: Any) -> Destination:
        return cls(
            str(row[0]),
            int(row[1]),
            int(row[2]),
            int(row[3]),
            None if row[4] is None else int(row[4]),
            None if row[5] is None else int(row[5]),
        )

    def admin_json(self) -> dict[str, Any]:
        failing = self.failures > 0
        return {
            "destination": self.destination,
            # The last failed attempt (0 once one succeeded) and the wait after it.
            "retry_last_ts": self.next_retry_ts - self.retry_interval_ms if failing else 0,
            "retry_interval": self.retry_interval_ms if failing else 0,
            "failure_ts": self.failure_ts,
            "last_successful_stream_ordering": self.last_delivered,
        }


_LAST_DELIVERED = (
    select(func.max(federation_destination_rooms.c.stream_id))
    .where(federation_destination_rooms.c.destination == federation_destinations.c.destination)
    .scalar_subquery()
)
_DESTINATION = select(
    federation_destinations.c.destination,
    federation_destinations.c.failures,
    federation_destinations.c.retry_interval_ms,
    federation_destinations.c.next_retry_ts,
    federation_destinations.c.failure_ts,
    _LAST_DELIVERED,
)


class FederationStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._txns_swept_ms = 0

    # Outbox --------------------------------------------------------------------------------

    async def enqueue(
        self,
        destinations: Collection[str],
        now_ms: int,
        *,
        event_id: str | None = None,
        edu: dict[str, Any] | None = None,
    ) -> None:
        if not destinations:
            return
        async with self.db.write() as conn:
            await self.enqueue_in(conn, destinations, now_ms, event_id=event_id, edu=edu)

    @staticmethod
    async def enqueue_in(
        conn: AsyncConnection,
        destinations: Collection[str],
        now_ms: int,
        *,
        event_id: str | None = None,
        edu: dict[str, Any] | None = None,
    ) -> None:
        """Queue within the caller's transaction."""
        if not destinations:
            return
        kind = "pdu" if event_id is not None else "edu"
        raw = jsonutil.dumps(edu) if edu is not None else None
        rows = [
            {"destination": d, "kind": kind, "event_id": event_id, "edu_json": raw, "created_ts": now_ms}
            for d in sorted(destinations)
        ]
        await conn.execute(insert(federation_outbox), rows)

    @staticmethod
    async def enqueue_pdus_in(
        conn: AsyncConnection, destinations: Collection[str], now_ms: int, event_ids: list[str]
    ) -> None:
        """Queue several events (in order) within the caller's transaction."""
        rows = [(d, "pdu", event_id, None, now_ms) for d in sorted(destinations) for event_id in event_ids]
        await _INSERT_OUTBOX.run(conn, rows)

    async def next_batch(self, destination: str, max_pdus: int, max_edus: int) -> OutboxBatch:
        """The oldest queued items for one destination, within the transaction limits."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(
                        federation_outbox.c.id,
                        federation_outbox.c.kind,
                        federation_outbox.c.event_id,
                        federation_outbox.c.edu_json,
                    )
                    .where(federation_outbox.c.destination == destination)
                    .order_by(federation_outbox.c.id)
                    .limit(max_pdus + max_edus)
                )
            ).all()
        batch = OutboxBatch([], [], [])
        for row in rows:
            if row.kind == "pdu":
                if len(batch.event_ids) >= max_pdus:
                    continue
                batch.event_ids.append(row.event_id)
            else:
                if len(batch.edus) >= max_edus:
                    continue
                batch.edus.append(jsonutil.loads(row.edu_json))
            batch.row_ids.append(int(row.id))
        return batch

    async def remove(
        self, row_ids: Collection[int], destination: str, delivered: Collection[str] = ()
    ) -> None:
        """Drop delivered outbox rows, and note the newest `delivered` event of each room."""
        if not row_ids:
            return
        async with self.db.write() as conn:
            await conn.execute(delete(federation_outbox).where(federation_outbox.c.id.in_(list(row_ids))))
            if delivered:
                newest = (
                    select(literal(destination), events.c.room_id, func.max(events.c.stream_id))
                    .where(events.c.event_id.in_(list(delivered)))
                    .group_by(events.c.room_id)
                )
                ins = dialect_insert(conn, federation_destination_rooms).from_select(
                    ["destination", "room_id", "stream_id"], newest
                )
                # Never backwards: with several workers, events may be queued out of stream order.
                newer = func.max if conn.dialect.name == "sqlite" else func.greatest
                kept = newer(federation_destination_rooms.c.stream_id, ins.excluded.stream_id)
                await conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=["destination", "room_id"], set_={"stream_id": kept}
                    )
                )

    async def destination_rooms(
        self, destination: str, offset: int, limit: int, backwards: bool
    ) -> tuple[list[tuple[str, int]], int]:
        """A page of (room ID, last delivered position) by room ID, and how many there are."""
        t = federation_destination_rooms.c
        mine = t.destination == destination
        order = t.room_id.desc() if backwards else t.room_id.asc()
        async with self.db.read() as conn:
            total = int((await conn.execute(select(func.count()).where(mine))).scalar() or 0)
            rows = await conn.execute(
                select(t.room_id, t.stream_id).where(mine).order_by(order).offset(offset).limit(limit)
            )
            return [(str(r[0]), int(r[1])) for r in rows], total

    async def pending_destinations(self) -> list[str]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(federation_outbox.c.destination).distinct())
            return [r[0] for r in rows]

    async def pending_count(self, destination: str) -> int:
        async with self.db.read() as conn:
            value = (
                await conn.execute(
                    select(func.count())
                    .select_from(federation_outbox)
                    .where(federation_outbox.c.destination == destination)
                )
            ).scalar()
        return int(value or 0)

    # Destinations ----------------------------------------------------------------------------

    async def get_retry(self, destination: str) -> RetryState:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        federation_destinations.c.failures,
                        federation_destinations.c.retry_interval_ms,
                        federation_destinations.c.next_retry_ts,
                    ).where(federation_destinations.c.destination == destination)
                )
            ).first()
        if row is None:
            return RetryState(0, 0, 0)
        return RetryState(int(row[0]), int(row[1]), int(row[2]))

    async def get_retries(self, destinations: Collection[str]) -> dict[str, RetryState]:
        """Retry state of several destinations (those without a row are absent)."""
        if not destinations:
            return {}
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(
                    federation_destinations.c.destination,
                    federation_destinations.c.failures,
                    federation_destinations.c.retry_interval_ms,
                    federation_destinations.c.next_retry_ts,
                ).where(federation_destinations.c.destination.in_(list(destinations)))
            )
            return {str(r[0]): RetryState(int(r[1]), int(r[2]), int(r[3])) for r in rows}

    async def set_retry(self, destination: str, state: RetryState, success_ts: int | None = None) -> None:
        """Record a destination's retry state (a row for every destination sent to: the
        admin API lists them). The first failure after a success starts `failure_ts`; a
        state without failures clears it."""
        values: dict[str, Any] = {
            "failures": state.failures,
            "retry_interval_ms": state.retry_interval_ms,
            "next_retry_ts": state.next_retry_ts,
        }
        if success_ts is not None:
            values["last_success_ts"] = success_ts
        if not state.failures:
            values["failure_ts"] = None
        elif state.failures == 1:
            values["failure_ts"] = state.next_retry_ts - state.retry_interval_ms  # this attempt
        async with self.db.write() as conn:
            res = await conn.execute(
                update(federation_destinations)
                .where(federation_destinations.c.destination == destination)
                .values(**values)
            )
            if res.rowcount == 0:
                await conn.execute(insert(federation_destinations).values(destination=destination, **values))

    async def list_destinations(
        self, offset: int, limit: int, order_by: str, backwards: bool
    ) -> tuple[list[Destination], int]:
        """A page of destinations in the admin API's order, and how many there are."""
        d = federation_destinations.c
        orders: dict[str, list[Any]] = {
            "destination": [d.destination],
            "retry_last_ts": [d.next_retry_ts - d.retry_interval_ms, d.destination],
            "retry_interval": [d.retry_interval_ms, d.destination],
            "failure_ts": [d.failure_ts, d.destination],  # never failed: last either way
            "last_successful_stream_ordering": [_LAST_DELIVERED, d.destination],
        }
        keys = orders[order_by]
        order = [(k.desc() if backwards else k.asc()).nulls_last() for k in keys]
        async with self.db.read() as conn:
            total = int(
                (await conn.execute(select(func.count()).select_from(federation_destinations))).scalar() or 0
            )
            rows = await conn.execute(_DESTINATION.order_by(*order).offset(offset).limit(limit))
            return [Destination.of(r) for r in rows], total

    async def get_destination(self, destination: str) -> Destination | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(_DESTINATION.where(federation_destinations.c.destination == destination))
            ).first()
        return None if row is None else Destination.of(row)

    # Received transactions -------------------------------------------------------------------

    async def get_txn_response(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(federation_received_txns.c.response_json).where(
                        federation_received_txns.c.origin == origin,
                        federation_received_txns.c.txn_id == txn_id,
                    )
                )
            ).first()
        return jsonutil.loads(row[0]) if row else None

    async def store_txn_response(
        self, origin: str, txn_id: str, response: dict[str, Any], now_ms: int
    ) -> None:
        async with self.db.write() as conn:
            # A retry racing its original is answered from whichever got here first.
            await _INSERT_TXN_RESPONSE.run(conn, [(origin, txn_id, jsonutil.dumps(response), now_ms)])
            # Transaction IDs only need to be remembered for as long as a sender might retry;
            # the old ones are swept now and then, not on every transaction.
            if now_ms - self._txns_swept_ms >= TXN_SWEEP_INTERVAL_MS:
                self._txns_swept_ms = now_ms
                await conn.execute(
                    delete(federation_received_txns).where(
                        federation_received_txns.c.received_ts < now_ms - TXN_KEEP_MS
                    )
                )
