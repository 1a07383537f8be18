"""Cached state never outlives its rows. SQLite hands the ID of a rolled-back or purged
state group out again: the cache must then hold the new group's state, and a purged room's
events must not be remembered as placed (a room joined again would skip them as already
processed)."""

from __future__ import annotations

import pytest
from sqlalchemy import delete

from bridge.schema import federation_event_state, federation_state_groups
from bridge.state import EventStateInfo, PreparedState, StateTracker
from tests.federation.support import CertAuthority, fed_server, federation_of
from tests.support.postgres import use_postgres

# SQLite hands a rolled-back or deleted row's ID out again; PostgreSQL's sequences never do,
# so there the new group gets a new ID, and the cache must hold the right state all the same.
REUSES_IDS = not use_postgres()


def _snapshot(event_id: str, room_id: str, topic_id: str) -> PreparedState:
    state = {("m.room.create", ""): "$create", ("m.room.topic", ""): topic_id}
    delta = [(k[0], k[1], v) for k, v in state.items()]
    return PreparedState(event_id, room_id, state, None, None, 0, delta)


class _Abort(Exception):
    pass


async def test_a_rolled_back_group_is_not_cached(test_ca: CertAuthority, tmp_path: str) -> None:
    async with fed_server(str(tmp_path), test_ca) as srv:
        tracker: StateTracker = federation_of(srv).tracker
        with pytest.raises(_Abort):
            async with srv.hs.db.write() as conn:
                lost = await tracker.write(conn, _snapshot("$lost", "!r:x", "$topic-lost"))
                raise _Abort
        async with srv.hs.db.write() as conn:
            kept = await tracker.write(conn, _snapshot("$kept", "!r:x", "$topic-kept"))
        tracker.settled("$kept", EventStateInfo(kept, None, False))
        assert (kept == lost) is REUSES_IDS
        assert (await tracker.load_group(kept))[("m.room.topic", "")] == "$topic-kept"


async def test_groups_of_a_purged_room_are_forgotten(test_ca: CertAuthority, tmp_path: str) -> None:
    async with fed_server(str(tmp_path), test_ca) as srv:
        tracker: StateTracker = federation_of(srv).tracker
        async with srv.hs.db.write() as conn:
            old = await tracker.write(conn, _snapshot("$old", "!gone:x", "$topic-old"))
        tracker.settled("$old", EventStateInfo(old, None, False))
        assert (await tracker.load_group(old))[("m.room.topic", "")] == "$topic-old"
        # What an admin purge does to these tables, then to the caches.
        async with srv.hs.db.write() as conn:
            for table in (federation_state_groups, federation_event_state):
                await conn.execute(delete(table).where(table.c.room_id == "!gone:x"))
        srv.hs.events.drop_room_caches("!gone:x")
        async with srv.hs.db.write() as conn:
            new = await tracker.write(conn, _snapshot("$new", "!new:x", "$topic-new"))
        tracker.settled("$new", EventStateInfo(new, None, False))
        assert (new == old) is REUSES_IDS
        assert (await tracker.load_group(new))[("m.room.topic", "")] == "$topic-new"
        assert (await tracker.get_infos(["$old"])) == {}
