"""Stream positions shared by several processes on PostgreSQL (homeserver.storage.postgres).

Each `Database` here stands for one worker process. Write transactions of different
workers run and commit side by side; a reader never moves past a position whose
transaction is still open, and a writer answers only once its write is readable
everywhere, even when it committed before a transaction with lower positions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text

from homeserver.storage import postgres
from homeserver.storage.engine import Database


@pytest.fixture
async def workers(pg_url: str) -> AsyncIterator[tuple[Database, Database, Database]]:
    """Two writing workers and a third that only reads."""
    dbs = (Database(pg_url), Database(pg_url), Database(pg_url))
    for db in dbs:
        await db.load_stream_position()
    async with dbs[0].write() as conn:
        await conn.execute(text("CREATE TABLE probe (id bigint PRIMARY KEY)"))
    try:
        yield dbs
    finally:
        for db in dbs:
            await db.close()


async def _rows(db: Database) -> set[int]:
    async with db.read() as conn:
        return {int(r[0]) for r in await conn.execute(text("SELECT id FROM probe"))}


async def _until(check: Callable[[], Awaitable[object]]) -> None:
    for _ in range(1000):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def _write(db: Database, hold: asyncio.Event | None = None, count: int = 1) -> list[int]:
    async with db.write() as conn:
        ids = await db.next_stream_ids(count)
        await conn.execute(text("INSERT INTO probe VALUES (:i)"), [{"i": i} for i in ids])
        if hold is not None:
            await hold.wait()
    return ids


async def _marker_held(db: Database) -> bool:
    async with db.read() as conn:
        return await postgres.lowest_marker(conn) is not None


async def _open_write(writer: Database, reader: Database) -> tuple[asyncio.Task[list[int]], asyncio.Event]:
    """A write by `writer` that keeps its transaction open until the event is set; returns
    once its marker shows."""
    release = asyncio.Event()
    task = asyncio.create_task(_write(writer, release))
    await _until(lambda: _marker_held(reader))
    return task, release


async def test_writers_of_two_workers_commit_side_by_side(
    workers: tuple[Database, Database, Database],
) -> None:
    a, b, reader = workers
    slow, release = await _open_write(a, reader)  # opens first: the lower positions
    fast = asyncio.create_task(_write(b))
    # `b` commits while `a` is still open (with the old stream-row lock it could not even
    # start) ...
    await _until(lambda: _rows(reader))
    (b_pos,) = await _rows(reader)
    # ... but answers only once that is readable everywhere, which waits for `a`.
    await asyncio.sleep(0.2)
    assert not fast.done()
    assert await reader.refresh_stream_position() < b_pos
    release.set()
    async with asyncio.timeout(10):
        (a_pos,) = await slow
        assert await fast == [b_pos]
    assert a_pos < b_pos
    assert await reader.refresh_stream_position() >= b_pos
    assert b.current_stream_id >= b_pos


async def test_a_killed_writer_does_not_hold_back_the_others(
    workers: tuple[Database, Database, Database],
) -> None:
    a, b, reader = workers
    doomed, _ = await _open_write(a, reader)
    fast = asyncio.create_task(_write(b))
    await asyncio.sleep(0.2)
    assert not fast.done()
    # The worker holding the lower positions dies: its session ends and its marker with it.
    async with reader.read() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND objsubid = 2 AND mode = 'ShareLock'"
            )
        )
    async with asyncio.timeout(10):
        (b_pos,) = await fast
    assert await reader.refresh_stream_position() >= b_pos
    assert await _rows(reader) == {b_pos}  # nothing of the killed transaction
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)


async def test_a_write_may_use_more_than_one_chunk(workers: tuple[Database, Database, Database]) -> None:
    a, b, reader = workers
    count = 3 * postgres.STREAM_CHUNK + 5
    release = asyncio.Event()
    big = asyncio.create_task(_write(a, release, count))
    await _until(lambda: _marker_held(reader))
    # Another worker takes a chunk while the big write is still drawing from its own.
    other = asyncio.create_task(_write(b, count=2))
    await asyncio.sleep(0.1)
    release.set()
    async with asyncio.timeout(10):
        ids = await big
        other_ids = await other
    assert ids == sorted(ids) and len(set(ids)) == count
    assert not set(ids) & set(other_ids)
    assert await _rows(reader) == set(ids) | set(other_ids)
    assert await reader.refresh_stream_position() >= max(ids + other_ids)


async def test_the_writers_benchmark_runs(pg_url: str) -> None:
    """A bounded run of `python -m bench.pg_writers` (two processes, each committing)."""
    from bench.pg_writers import measure

    assert await asyncio.to_thread(measure, 2, 2, 1.0) > 0


async def test_waiting_on_a_marker_is_bounded_by_the_database(
    workers: tuple[Database, Database, Database],
) -> None:
    a, _, reader = workers
    holder, release = await _open_write(a, reader)
    async with reader.read() as conn:
        marker = await postgres.lowest_marker(conn)
        assert marker is not None
        assert await postgres.wait_for_marker(conn, marker, 0.2) is False
        # The connection is usable afterwards, and the wait ends when the holder does.
        release.set()
        assert await postgres.wait_for_marker(conn, marker, 10) is True
    await holder
