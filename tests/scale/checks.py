"""Checks on what a room's history looks like in the database after a scale or fault test."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from homeserver import jsonutil
from homeserver.storage.engine import Database
from homeserver.storage.schema import events
from tests.scale.matrix import SendLog


@dataclass
class StoredRow:
    stream_id: int
    event_id: str
    pdu: dict[str, Any]


async def room_rows(db_url: str, room_id: str) -> list[StoredRow]:
    db = Database(db_url)
    try:
        async with db.read() as conn:
            rows = (
                await conn.execute(
                    select(events.c.stream_id, events.c.event_id, events.c.json)
                    .where(events.c.room_id == room_id, events.c.outlier.is_(False))
                    .order_by(events.c.stream_id)
                )
            ).all()
    finally:
        await db.close()
    return [StoredRow(int(r[0]), str(r[1]), jsonutil.loads(r[2])) for r in rows]


def assert_linear_chain(rows: list[StoredRow]) -> None:
    """Local events of one room, created one at a time: each cites exactly the one before it."""
    for prev, row in itertools.pairwise(rows):
        assert row.pdu["prev_events"] == [prev.event_id], "fork:\n" + _describe(rows, row.stream_id)
        assert row.pdu["depth"] == prev.pdu["depth"] + 1


def assert_exactly_once(rows: list[StoredRow], logs: list[SendLog]) -> int:
    """Every acknowledged event is stored exactly once, and no send was stored twice."""
    ids = Counter(r.event_id for r in rows)
    bodies = Counter(
        r.pdu["content"].get("body") for r in rows if r.pdu["type"] == "m.room.message"
    )
    acked = 0
    for log in logs:
        for txn, event_id in log.acked.items():
            assert ids[event_id] == 1, f"acknowledged {event_id} ({txn}) stored {ids[event_id]} times"
            assert bodies[txn] == 1, f"txn {txn} stored {bodies[txn]} times"
            acked += 1
    duplicated = [b for b, n in bodies.items() if n > 1]
    assert not duplicated, f"stored more than once: {duplicated[:5]}"
    return acked


def _describe(rows: list[StoredRow], around: int) -> str:
    return "\n".join(
        f"{r.stream_id} {r.event_id[:8]} {r.pdu['type']} {r.pdu.get('state_key')} depth={r.pdu['depth']} "
        f"prev={[p[:8] for p in r.pdu['prev_events']]}"
        for r in rows
        if abs(r.stream_id - around) < 8
    )
