"""The PostgreSQL connection gate: a burst of requests far larger than the pool waits its
turn (nothing fails), requests already in progress go first, and cancellation frees slots."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import literal, select

from homeserver.storage import engine as engine_mod
from homeserver.storage.engine import Database, _Gate


async def test_burst_far_larger_than_the_pool_succeeds(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # With the old pool a waiter could lose its turn again and again until the pool timed out.
    monkeypatch.setattr(engine_mod, "POOL_TIMEOUT_S", 5)
    db = Database(pg_url, pool_size=2)
    try:

        async def request() -> None:
            for _ in range(5):
                async with db.read() as conn:
                    await conn.scalar(select(literal(1)))
                    await asyncio.sleep(0.001)

        await asyncio.gather(*(request() for _ in range(400)))
        async with db.write() as conn:
            await conn.scalar(select(literal(1)))
        assert db._gate is not None and db._gate.waiting == 0
    finally:
        await db.close()


async def test_requests_in_progress_go_first() -> None:
    gate = _Gate(1)
    order: list[str] = []
    release_first = asyncio.Event()

    async def holder() -> None:
        await gate.acquire()
        await release_first.wait()
        gate.release()

    async def started_request(name: str) -> None:
        await gate.acquire()  # its first query
        gate.release()
        await started.wait()
        await gate.acquire()  # its second query, queued after the fresh one below
        order.append(name)
        gate.release()

    async def fresh_request(name: str) -> None:
        await gate.acquire()
        order.append(name)
        gate.release()

    started = asyncio.Event()
    a = asyncio.create_task(started_request("in-progress"))
    await asyncio.sleep(0)
    h = asyncio.create_task(holder())
    await asyncio.sleep(0)
    f = asyncio.create_task(fresh_request("fresh"))
    await asyncio.sleep(0)
    started.set()
    await asyncio.sleep(0.01)
    release_first.set()
    await asyncio.gather(a, h, f)
    assert order == ["in-progress", "fresh"]


async def test_cancelled_waiter_gives_back_its_slot() -> None:
    gate = _Gate(1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    await asyncio.wait_for(gate.acquire(), 1)
    gate.release()
    assert gate.waiting == 0
