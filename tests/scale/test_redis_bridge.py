"""The Redis bridge between two workers' notifiers, in one process: wake-ups and invalidations."""

from __future__ import annotations

import asyncio
import functools
import uuid

from homeserver.invalidation import RESET_TOPIC
from homeserver.storage.engine import Database
from homeserver.sync.notifier import Notifier
from homeserver.sync.redis_bridge import RedisBridge


async def _connected(*bridges: RedisBridge) -> None:
    for _ in range(500):
        if all(b.connected for b in bridges):
            break
        await asyncio.sleep(0.02)
    assert all(b.connected for b in bridges)
    # SUBSCRIBE has been acknowledged by the time `connected` is set; give Redis a moment anyway.
    await asyncio.sleep(0.1)


async def test_notifications_and_invalidations_reach_the_other_worker(pg_url: str, redis_url: str) -> None:
    channel = f"test-{uuid.uuid4().hex[:8]}"
    dbs = [Database(pg_url), Database(pg_url)]
    notifiers = [Notifier(), Notifier()]
    bridges = [
        RedisBridge(redis_url, channel, db, n, idle_poll_s=30) for db, n in zip(dbs, notifiers, strict=True)
    ]
    resets: list[int] = []
    seen: list[tuple[int, object]] = []
    got = asyncio.Event()

    def on_tokens(i: int, payload: object) -> None:
        seen.append((i, payload))
        got.set()

    for i, b in enumerate(bridges):
        b.subscribe("auth.tokens", functools.partial(on_tokens, i))
        b.subscribe(RESET_TOPIC, functools.partial(lambda i, _payload: resets.append(i), i))
    try:
        for b in bridges:
            await b.start()
        await _connected(*bridges)
        assert sorted(resets) == [0, 1]  # each dropped its caches on (first) connect

        # Worker 0 commits a little further on and notifies room !r; worker 1's waiter on !r
        # wakes, and has learned the position (it read the database's on connecting).
        position = max(db.current_stream_id for db in dbs) + 5
        waiter = asyncio.create_task(notifiers[1].wait("@u:x", ["!r:x"], 10))
        await asyncio.sleep(0.05)
        dbs[0].observe_stream_position(position)
        notifiers[0].notify(rooms=["!r:x"])
        assert await asyncio.wait_for(waiter, 5) is True
        assert dbs[1].current_stream_id == position

        # A local-only notification does not travel.
        waiter = asyncio.create_task(notifiers[1].wait("@u:x", ["!r:x"], 0.5))
        await asyncio.sleep(0.05)
        notifiers[0].notify(rooms=["!r:x"], local_only=True)
        assert await waiter is False

        # Invalidations go to the other worker's handlers only.
        bridges[0].broadcast("auth.tokens", ["hash1"])
        await asyncio.wait_for(got.wait(), 5)
        assert seen == [(1, ["hash1"])]
    finally:
        for b in bridges:
            await b.stop()
        for db in dbs:
            await db.close()
