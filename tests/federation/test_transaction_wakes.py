"""A federation transaction's PDUs wake a parked /sync once, not once per PDU: each wake
costs the syncing user a computation and a round trip, as much CPU as persisting a PDU."""

from __future__ import annotations

import asyncio

from tests.federation.support import CertAuthority, federation_of, joined_pair, wait_for


async def test_a_transactions_messages_arrive_in_one_sync(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, _b, alice, bob, room_id):
        await bob.sync()
        # Queue five messages on A while it sends nothing: one transaction carries them.
        queue = federation_of(a).queue
        await queue.stop()
        sent = [await alice.send(room_id, f"burst {i}") for i in range(5)]
        parked = asyncio.create_task(bob.sync(timeout_ms=10_000))
        await asyncio.sleep(0.2)  # bob's long-poll is parked on B
        assert not parked.done()
        await queue.start()
        first = await parked
        events = first["rooms"]["join"][room_id]["timeline"]["events"]
        assert [e["event_id"] for e in events if e["type"] == "m.room.message"] == sent
        await wait_for(lambda: queue.idle(1), what="A's queue drained")
