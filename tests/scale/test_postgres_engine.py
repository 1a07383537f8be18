"""The PostgreSQL engine: the connection gate (a burst of requests far larger than the pool
waits its turn, requests in progress go first, cancellation frees slots), room locks kept
between batches, and group commit with reserved stream positions and savepoints."""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import literal, select

from homeserver.server import build_homeserver
from homeserver.storage import engine as engine_mod
from homeserver.storage.engine import POOL_TIMEOUT_S, Database
from homeserver.storage.gate import ConnectionGate
from tests.support.server import free_port
from tests.support.server import test_config as make_config


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
    gate = ConnectionGate(1, POOL_TIMEOUT_S)
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
    gate = ConnectionGate(1, POOL_TIMEOUT_S)
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


@pytest.fixture
def locks_taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The advisory room locks acquired during the test, in order."""
    from homeserver.storage import postgres

    taken: list[str] = []
    real = postgres.acquire_lock

    async def counting(engine: object, name: str) -> postgres.HeldLock:
        taken.append(name)
        return await real(engine, name)  # type: ignore[arg-type]

    monkeypatch.setattr(postgres, "acquire_lock", counting)
    return taken


async def test_room_lock_is_reused_and_still_excludes_other_workers(
    pg_url: str, locks_taken: list[str]
) -> None:
    a, b = Database(pg_url), Database(pg_url)
    inside: list[str] = []
    try:
        for _ in range(5):  # back to back in one process: one advisory lock for all
            async with a.room_lock("!r:x"):
                pass
        assert len(locks_taken) == 1

        async def hold(db: Database, name: str) -> None:
            async with db.room_lock("!r:x"):
                inside.append(name + "+")
                await asyncio.sleep(0.05)
                inside.append(name + "-")

        # The other "worker" waits while `a` still holds (or lingers on) the lock.
        await asyncio.gather(hold(a, "a"), hold(b, "b"))
        assert inside in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])
        await asyncio.sleep(0.05)  # the lingering lock is let go ...
        async with asyncio.timeout(2), b.room_lock("!r:x"):
            pass  # ... so `b` gets it promptly
    finally:
        await a.close()
        await b.close()


async def test_group_commit_isolates_a_failing_writer_and_reserves_positions(pg_url: str) -> None:
    from sqlalchemy import text

    from homeserver.storage import postgres

    db = Database(pg_url)
    try:
        await db.load_stream_position()
        start = db.current_stream_id
        async with db.write() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS gc_probe (id bigint PRIMARY KEY)"))
        release = asyncio.Event()

        async def first() -> int:
            async with db.write() as conn:
                await release.wait()  # the others queue up behind: one transaction for all
                pos = await db.next_stream_id()
                await conn.execute(text("INSERT INTO gc_probe VALUES (:i)"), {"i": pos})
                return pos

        async def good(i: int) -> int:
            async with db.write() as conn:
                pos = await db.next_stream_id()
                await conn.execute(text("INSERT INTO gc_probe VALUES (:i)"), {"i": pos})
                return pos

        async def bad() -> None:
            async with db.write() as conn:
                await db.next_stream_id()
                await conn.execute(text("INSERT INTO gc_probe VALUES (NULL)"))  # violates NOT NULL

        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(first())]
        await asyncio.sleep(0.05)
        tasks += [asyncio.create_task(good(1)), asyncio.create_task(bad()), asyncio.create_task(good(2))]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[2], Exception)
        written = [r for r in results if isinstance(r, int)]
        assert len(written) == 3
        async with db.read() as conn:
            rows = sorted(r[0] for r in await conn.execute(text("SELECT id FROM gc_probe")))
            row = await postgres.visible_stream(conn)
        assert rows == sorted(written)
        # Everything written is at or below the committed position, which readers may use.
        assert max(rows) <= row == db.current_stream_id
        assert row > start
    finally:
        await db.close()


async def test_ping_goes_before_queued_new_requests(pg_url: str) -> None:
    db = Database(pg_url, pool_size=1)
    try:
        assert db._gate is not None
        assert await db.ping()  # the connection exists
        await db._gate.acquire()  # the only connection is busy

        async def fresh_read() -> None:
            async with db.read() as conn:
                await conn.scalar(select(literal(1)))
                await asyncio.sleep(0.5)

        # New requests: tasks that have not used a connection yet (not copies of this one's context).
        readers = [asyncio.create_task(fresh_read(), context=contextvars.Context()) for _ in range(5)]
        await asyncio.sleep(0.01)  # the readers queue first
        queued = [asyncio.create_task(db.ping(timeout=10), context=contextvars.Context()) for _ in range(3)]
        await asyncio.sleep(0.05)
        db._gate.release()
        done, _ = await asyncio.wait(queued, timeout=1.5)
        assert len(done) == 3 and all(t.result() for t in done)  # not behind 5 x 0.5 s of readers
        await asyncio.gather(*readers)
    finally:
        await db.close()


async def test_a_writer_cancelled_anywhere_leaves_the_write_path_usable(pg_url: str) -> None:
    # A task cancelled while its group commit was committing (a federation sender stopped on
    # failover) used to skip releasing the write lock: every later write in the process hung.
    db = Database(pg_url, pool_size=4)
    try:
        for steps in range(40):

            async def writer() -> None:
                async with db.write() as conn:
                    await conn.scalar(select(literal(1)))

            task = asyncio.create_task(writer())
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with asyncio.timeout(10):
                async with db.write() as conn:
                    assert await conn.scalar(select(literal(1))) == 1
        assert not db._write_lock.locked()
    finally:
        await db.close()


async def test_room_lock_kept_says_whether_another_worker_could_have_held_it(pg_url: str) -> None:
    a, b = Database(pg_url), Database(pg_url)
    try:
        async with a.room_lock("!k:x"):
            assert not a.room_lock_kept("!k:x")  # just taken: the other worker may have written
        async with a.room_lock("!k:x"):
            assert a.room_lock_kept("!k:x")  # kept from the previous use
        assert not a.room_lock_kept("!k:x")  # outside the lock
        await asyncio.sleep(0.05)  # let it go, so that `b` can take it
        async with b.room_lock("!k:x"):
            pass
        async with a.room_lock("!k:x"):
            assert not a.room_lock_kept("!k:x")
    finally:
        await a.close()
        await b.close()


async def test_a_sole_writer_serialises_rooms_without_advisory_locks(
    pg_url: str, locks_taken: list[str]
) -> None:
    """PostgreSQL served by one process: room locks are local (no advisory lock round
    trips), still exclusive within the process, and always "kept"."""
    db = Database(pg_url)
    db.sole_writer = True
    inside: list[str] = []
    try:

        async def hold(name: str) -> None:
            async with db.room_lock("!s:x"):
                assert db.room_lock_kept("!s:x")
                inside.append(name + "+")
                await asyncio.sleep(0.02)
                inside.append(name + "-")

        await asyncio.gather(hold("a"), hold("b"))
        assert inside == ["a+", "a-", "b+", "b-"]
        assert locks_taken == []
        assert not db.room_lock_kept("!s:x")  # outside the lock
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("redis", "workers", "sole"),
    [(False, {}, True), (True, {}, False), (False, {"count": 2}, False), (False, {"index": 0}, False)],
)
async def test_only_one_process_on_postgres_is_the_sole_writer(
    pg_url: str, tmp_path: Path, redis: bool, workers: dict[str, int], sole: bool
) -> None:
    config = make_config(
        str(tmp_path), free_port(), database={"url": pg_url}, redis={"enabled": redis}, workers=workers
    )
    hs = build_homeserver(config)
    try:
        assert hs.db.sole_writer is sole
        assert hs.db.exclusive is sole
        assert hs.events.cache_state is sole
    finally:
        await hs.db.close()
