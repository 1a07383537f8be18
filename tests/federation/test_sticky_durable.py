"""A pending push of sticky events (MSC4354) to a server that newly joined a room outlives
the process that scheduled it (bridge.sticky, homeserver.storage.sticky_pushes): resumed
when the resident server restarts, and when another worker takes the outbound queue over.

A waits for C to hold its join before pushing (it asks for the join, backing off). Here A's
first attempt is set an hour away, so the push is still pending, as a row, when A goes
down (or its worker loses the queue); the test then makes the row due, as time would. C
fetches no history when it joins, so the sticky event reaches C only if it is pushed.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable

import aiohttp
import pytest
from sqlalchemy import select, update

from bridge.service import Federation
from homeserver.storage.schema import sticky_pending_pushes
from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    has_membership,
    wait_for,
)
from tests.federation.test_sticky_events import Seen, send_sticky
from tests.federation.workers_support import two_workers
from tests.support.server import RunningServer, free_port, lasting_database

pytestmark = pytest.mark.timeout(120)

_p = sticky_pending_pushes.c


async def pending_rows(srv: RunningServer) -> list[tuple[str, str, str]]:
    """(room, destination, join event ID) of every pending push in `srv`'s database."""
    async with srv.hs.db.read() as conn:
        rows = await conn.execute(select(_p.room_id, _p.destination, _p.join_event_id))
        return [(r[0], r[1], r[2]) for r in rows]


async def make_due(srv: RunningServer) -> None:
    """Time passes: every pending push's next attempt is now."""
    async with srv.hs.db.write() as conn:
        await conn.execute(update(sticky_pending_pushes).values(next_attempt_ts=srv.hs.clock.time_ms()))


async def join_pending(
    resident: RunningServer, alice: Client, carol: Client, c: RunningServer
) -> tuple[str, str, str]:
    """Alice (on the resident server) creates a room with a sticky event; Carol on C joins
    it; the push to C is left pending. Returns (room ID, the sticky event's ID, Carol's join)."""
    room_id = await alice.create_room(preset="public_chat")
    sticky = await send_sticky(alice, room_id, "alice")
    federation_of(c).membership.after_join.clear()
    await carol.join(room_id, via=[resident.server_name])
    await wait_for(lambda: has_membership(resident, room_id, carol.user_id), what="carol joined on A")
    membership = await resident.hs.events.get_membership(room_id, carol.user_id)
    assert membership is not None
    join_id = membership[1]
    await wait_for(lambda: _nonempty(pending_rows(resident)), what="the pending push recorded")
    assert await pending_rows(resident) == [(room_id, c.server_name, join_id)]
    return room_id, sticky, join_id


async def _nonempty(rows: Awaitable[list[tuple[str, str, str]]]) -> bool:
    return bool(await rows)


async def test_a_pending_push_survives_a_restart(test_ca: CertAuthority, tmp_path: os.PathLike[str]) -> None:
    dirs = [os.path.join(str(tmp_path), name) for name in ("a", "c")]
    a_port = free_port()
    async with (
        lasting_database() as database,
        fed_server(dirs[1], test_ca) as c,
        aiohttp.ClientSession() as http,
    ):
        carol = await Client.login(c, "carol", http)
        async with fed_server(dirs[0], test_ca, fed_port=a_port, **database) as a:
            federation_of(a).sticky.ready_first_s = 3600.0
            alice = await Client.login(a, "alice", http)
            room_id, sticky, _join = await join_pending(a, alice, carol, c)
            # A goes down with the push pending (its wait first, so that nothing acts on the
            # row while the push comes due).
            await federation_of(a).sticky.stop()
            assert federation_of(a).sticky.pushed[c.server_name] == 0
            await make_due(a)

        # A again, same database, name and key: it resumes the push, and C gets the event.
        async with fed_server(dirs[0], test_ca, fed_port=a_port, **database) as a:
            seen = Seen(carol, room_id)
            await seen.until(sticky)
            assert seen.sticky[sticky]["content"]["msc4354_sticky_key"] == "alice"
            sticky_a = federation_of(a).sticky
            assert sticky_a.resumed == 1 and sticky_a.pushed[c.server_name] == 1
            assert await pending_rows(a) == []


async def test_a_worker_taking_the_queue_over_resumes_a_pending_push(
    test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    dirs = [os.path.join(str(tmp_path), name) for name in ("a", "c")]
    async with (
        two_workers(dirs[0], test_ca) as (w1, w2),
        fed_server(dirs[1], test_ca) as c,
        aiohttp.ClientSession() as http,
    ):
        workers = [federation_of(w1), federation_of(w2)]
        for fed in workers:
            fed.sticky.ready_first_s = 3600.0
        await wait_for(lambda: _true(_leading(workers) is not None), what="a worker leading the queue")
        alice = await Client.login(w1, "alice", http)
        carol = await Client.login(c, "carol", http)
        # C's join reaches worker 1 (the port in A's name), which schedules the push.
        room_id, sticky, _join = await join_pending(w1, alice, carol, c)
        # Worker 1 dies with its wait (the rest of it lives on, to keep the test simple);
        # the push is still due.
        await workers[0].sticky.stop()
        await make_due(w1)

        # The worker leading the queue leaves; the other takes it over, and the push.
        leader = _leading(workers)
        assert leader is not None and leader.leader is not None
        await leader.leader.stop()
        await wait_for(
            lambda: _true((new := _leading(workers)) is not None and new is not leader),
            timeout=30,
            what="the other worker leading the queue",
        )
        new_leader = _leading(workers)
        assert new_leader is not None
        await Seen(carol, room_id).until(sticky, timeout=40)
        assert new_leader.sticky.resumed == 1 and new_leader.sticky.pushed[c.server_name] == 1
        assert await pending_rows(w1) == []


def _leading(workers: list[Federation]) -> Federation | None:
    leading = [f for f in workers if f.queue.leading]
    return leading[0] if len(leading) == 1 else None


async def _true(value: bool) -> bool:
    return value
