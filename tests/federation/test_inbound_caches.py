"""The caches on the inbound PDU path stay correct.

A server that joined a room over federation keeps the room's auth events as outliers and
reads their status for every PDU, and keeps its cached extremities moving with remote
messages instead of dropping the room's cache each time. Both must never serve stale data.
"""

from __future__ import annotations

from sqlalchemy import select

from bridge.schema import federation_event_state
from tests.federation.support import (
    CertAuthority,
    federation_of,
    joined_pair,
    room_bodies,
    wait_for,
)


async def test_remote_messages_keep_the_dag_linear_and_outlier_status_fresh(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs, room_version="11") as (_, b, alice, bob, room_id):
        # Remote messages arrive one after another; B's cached extremities follow them.
        sent = [await alice.send(room_id, f"from A {i}") for i in range(5)]

        async def all_on_b() -> bool:
            bodies = await room_bodies(bob, room_id)
            return all(f"from A {i}" in bodies for i in range(5))

        await wait_for(all_on_b, what="A's messages on B")
        cached, _ = await b.hs.events.get_extremities_and_depth(room_id)
        stored, _ = await b.hs.events._query_extremities(room_id)
        assert cached == stored == [sent[-1]]
        # So B's next event follows A's last one instead of forking the room.
        reply = await bob.send(room_id, "from B")
        stored_reply = await b.hs.events.get_event(reply)
        assert stored_reply is not None
        assert stored_reply.event.prev_event_ids == [sent[-1]]

        # The create event reached B with the join's state: an outlier, whose status is cached.
        fb = federation_of(b)
        tracker = fb.tracker
        create_id = (await b.hs.events.get_current_state_ids(room_id))[("m.room.create", "")]
        info = (await tracker.get_infos([create_id]))[create_id]
        assert info.state_group is None and info.rejected_reason is None
        assert create_id in tracker._outlier_infos

        # Placing it in the DAG: a read overlapping the write sees the old row (the change is
        # not committed yet) but must not keep it; the first read after the commit sees the group.
        create = (await b.hs.events.get_pdus([create_id]))[create_id]
        prepared = await tracker.prepare(create, {("m.room.create", ""): create_id}, [])
        async with b.hs.db.write() as conn:
            group = await tracker.write(conn, prepared)
            overlapping = (await tracker.get_infos([create_id]))[create_id]
        assert overlapping.state_group is None
        after = (await tracker.get_infos([create_id]))[create_id]
        assert after.state_group == group
        async with b.hs.db.read() as conn:
            row = (
                await conn.execute(
                    select(federation_event_state.c.state_group).where(
                        federation_event_state.c.event_id == create_id
                    )
                )
            ).one()
        assert row[0] == group
