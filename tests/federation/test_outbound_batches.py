"""Local messages in a federated room: their state rows and outbox rows are written in the
message batch's own transaction (bridge.outbound), and every message still reaches the
other server, with the state it was sent in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, select

from bridge.schema import federation_event_state
from tests.federation.support import (
    CertAuthority,
    federation_of,
    joined_pair,
    room_bodies,
    wait_for,
)
from tests.support.database import inserted_tables
from tests.support.server import RunningServer


@contextmanager
def transactions(srv: RunningServer) -> Iterator[list[list[str]]]:
    """The write statements of each transaction committed on `srv` meanwhile."""
    done: list[list[str]] = []
    open_: dict[int, list[str]] = {}
    engine = srv.hs.db.engine.sync_engine

    def statement(conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        words = sql.split()
        if words[0].upper() != "SELECT":
            # On PostgreSQL one statement may insert into several tables (WITH … INSERT).
            tables = inserted_tables(sql)
            seen = open_.setdefault(id(conn), [])
            seen.extend([f"INSERT INTO {t}" for t in tables] or [" ".join(words[:3])])

    def commit(conn: Any) -> None:
        done.append(open_.pop(id(conn), []))

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    try:
        yield done
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)


async def test_a_batch_queues_its_messages_in_its_own_transaction(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs, room_version="11") as (a, _b, alice, bob, room_id):
        with transactions(a) as txns:
            one = await alice.send(room_id, "solo")
        mine = [t for t in txns if "INSERT INTO events" in t]
        assert len(mine) == 1, txns
        assert "INSERT INTO federation_event_state" in mine[0]
        assert "INSERT INTO federation_outbox" in mine[0]
        # No other transaction wrote the message's state or queued it.
        assert not [t for t in txns if t is not mine[0] and "INSERT INTO federation_event_state" in t]

        # A burst: batches of several messages, each sent on, in order, with the room's state.
        await alice.state(room_id, "m.room.topic", {"topic": "before the burst"})
        sent = await asyncio.gather(*(alice.send(room_id, f"burst {i}") for i in range(12)))

        async def all_on_b() -> bool:
            bodies = await room_bodies(bob, room_id)
            return all(f"burst {i}" in bodies for i in range(12))

        await wait_for(all_on_b, what="the burst on B")
        tracker = federation_of(a).tracker
        async with a.hs.db.read() as conn:
            rows = dict(
                (
                    await conn.execute(
                        select(federation_event_state.c.event_id, federation_event_state.c.state_group).where(
                            federation_event_state.c.event_id.in_([one, *sent])
                        )
                    )
                ).all()
            )
        assert set(rows) == {one, *sent}
        current = await a.hs.events.get_current_state_ids(room_id)
        for event_id in sent:
            assert await tracker.load_group(rows[event_id]) == current
        assert a.hs.creator.batched_messages > a.hs.creator.batches  # some batches held several
