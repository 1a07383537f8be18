"""The caches on the inbound PDU path stay correct.

A server that joined a room over federation keeps the room's auth events as outliers and
reads their status for every PDU, and keeps its cached extremities moving with remote
messages instead of dropping the room's cache each time. Both must never serve stale data.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import func, select

from bridge.schema import federation_event_state
from homeserver.storage.cs_schema import event_push_changes, event_search
from homeserver.storage.schema import current_state
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
        stored, _, _ = await b.hs.events._query_head(room_id)
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


async def test_remote_messages_write_push_actions_and_search_rows_with_the_event(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A remote message's push actions and search rows are written in its own transaction,
    once: not again by the listeners, and not as a "late" push write (which would make
    every later /sync count the room's unread notifications afresh)."""
    async with joined_pair(test_ca, tmp_dirs, room_version="11") as (_, b, alice, bob, room_id):
        sent = [await alice.send(room_id, f"remote word{i}") for i in range(3)]

        async def counted() -> Any:
            bob.since = None  # an initial sync: the room and its counts are always there
            joined = (await bob.sync())["rooms"]["join"].get(room_id, {})
            counts = joined.get("unread_notifications", {})
            return counts if counts.get("notification_count") == 3 else None

        await wait_for(counted, what="three notifications on B")
        async with b.hs.db.read() as conn:
            search_rows = (
                await conn.execute(
                    select(event_search.c.event_id, func.count())
                    .where(event_search.c.event_id.in_(sent))
                    .group_by(event_search.c.event_id)
                )
            ).all()
            changes = (
                await conn.execute(
                    select(event_push_changes.c.late_stream_id).where(
                        event_push_changes.c.user_id == bob.user_id,
                        event_push_changes.c.room_id == room_id,
                    )
                )
            ).one()
        assert dict(search_rows) == dict.fromkeys(sent, 1)
        # Written once: the listeners did not try again (their inserts would collide).
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert changes.late_stream_id is None
        hits = await bob.call(
            "POST", "/search", {"search_categories": {"room_events": {"search_term": "word1"}}}
        )
        assert [r["result"]["event_id"] for r in hits["search_categories"]["room_events"]["results"]] == [
            sent[1]
        ]


async def test_cached_current_state_ids_follow_local_and_remote_state(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    """Every PDU is checked against the room's whole current state, which one process keeps
    cached: state changed here, over federation, or by a redaction must all show in it."""
    async with joined_pair(test_ca, tmp_dirs, room_version="11") as (_, b, alice, bob, room_id):
        events = b.hs.events

        async def stored() -> dict[tuple[str, str], str]:
            async with b.hs.db.read() as conn:
                rows = await conn.execute(
                    select(current_state.c.type, current_state.c.state_key, current_state.c.event_id).where(
                        current_state.c.room_id == room_id
                    )
                )
                return {(r[0], r[1]): r[2] for r in rows}

        async def agrees() -> bool:
            return await events.get_current_state_ids(room_id) == await stored()

        assert await agrees()
        cached = events._rooms[room_id].ids
        assert cached is not None
        # Local state (bob's display name, sent on B).
        await bob.state(room_id, "m.room.member", {"membership": "join", "displayname": "Bob"}, bob.user_id)
        assert events._rooms[room_id].ids is cached  # kept, and moved forward
        assert await agrees()
        # Remote state (alice's topic, from A).
        topic = await alice.state(room_id, "m.room.topic", {"topic": "t"})

        async def topic_on_b() -> bool:
            return (await events.get_current_state_ids(room_id)).get(("m.room.topic", "")) == topic

        await wait_for(topic_on_b, what="the topic on B")
        assert await agrees()
        # A remote message keeps the cache (and changes nothing in it).
        before = await events.get_current_state_ids(room_id)
        await alice.send(room_id, "plain")
        await wait_for(lambda: _has_body(bob, room_id, "plain"), what="the message on B")
        assert await events.get_current_state_ids(room_id) == before
        assert await agrees()
        # The returned map is the caller's own.
        mine = await events.get_current_state_ids(room_id)
        mine.clear()
        assert await agrees()


async def _has_body(client: Any, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)
