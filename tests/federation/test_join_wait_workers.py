"""PDUs for a room this server is joining wait for the join on every worker, not only on the
one doing the join (bridge.events_in: `joining`, `wait_for_other_join`).

Two workers of A (PostgreSQL, Redis); B is the room's resident server. Worker 1 joins B's
room; meanwhile a transaction from B with one of the room's events reaches worker 2, which
does not know the room: it waits for worker 1's join, then takes the event in.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from homeserver.events import pdu_json
from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    has_membership,
    wait_for,
)
from tests.federation.workers_support import send_txn_to_worker, two_workers
from tests.support.diagnostics import task_dump_after

pytestmark = pytest.mark.timeout(120)


async def test_a_pdu_reaching_another_worker_waits_for_the_join(
    test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    dirs = [os.path.join(str(tmp_path), name) for name in ("a", "b")]
    os.makedirs(dirs[1])
    async with (
        task_dump_after(100, "join wait across workers"),
        two_workers(dirs[0], test_ca) as (w1, w2),
        fed_server(dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        fed1, fed2 = federation_of(w1), federation_of(w2)
        # Worker 1 fetches no history when it joins: the event reaches A only through worker 2.
        fed1.membership.after_join.clear()
        bob = await Client.login(b, "bob", http)
        alice = await Client.login(w1, "alice", http)
        room_id = await bob.create_room(preset="public_chat")
        hello = await bob.send(room_id, "hello from B")
        pdu = pdu_json((await b.hs.events.get_pdus([hello]))[hello])

        # A PDU for a room no worker is joining is dropped at once.
        other_room = await bob.create_room(preset="public_chat")
        other = await bob.send(other_room, "nobody joins this")
        other_pdu = pdu_json((await b.hs.events.get_pdus([other]))[other])
        # (Its ID is unknown without the room's version: it goes unanswered.)
        assert await send_txn_to_worker(b, w2, [other_pdu], "unknown-room") == {}
        assert await w2.hs.events.get_event(other) is None
        assert fed2.inbound.other_join_waits == 0

        # Worker 1 starts joining the room (the join itself follows below); worker 2 gets
        # B's event meanwhile, and waits instead of dropping it.
        joining = fed1.inbound.joining(room_id)
        joining.__enter__()
        try:
            await fed1.inbound.join_recorded(room_id)
            sending = asyncio.create_task(send_txn_to_worker(b, w2, [pdu], "during-join"))
            await wait_for(
                lambda: _true(fed2.inbound.other_join_waits == 1 or sending.done()),
                what="worker 2 waiting for the join",
            )
            assert not sending.done(), sending.result()
            await alice.join(room_id, via=[b.server_name])
            assert await has_membership(w1, room_id, alice.user_id)
        finally:
            joining.__exit__(None, None, None)
        answers = await asyncio.wait_for(sending, 60)
        assert answers == {hello: {}}
        stored = await w2.hs.events.get_event(hello)
        assert stored is not None and stored.stream_id > 0
        # Read where it was stored (these in-process workers run no Redis bridge: worker 1
        # learns of worker 2's positions only with its own next write).
        alice_on_w2 = Client(w2.base_url, alice.user_id, alice.token, http)
        bodies = [e["content"].get("body") for e in await alice_on_w2.messages(room_id)]
        assert "hello from B" in bodies
        assert fed2.inbound.other_join_waits == 1


async def _true(value: bool) -> bool:
    return value
