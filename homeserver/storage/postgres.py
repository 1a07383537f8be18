"""PostgreSQL specifics: shared stream positions, advisory locks and leader election.

Several worker processes may share one PostgreSQL database. Three things must hold
across them, and this module provides the primitives:

- Stream positions are unique and become visible in order. Every write transaction
  first locks the single `stream_positions` row (`UPDATE ... RETURNING`, which also
  reads the latest committed value), allocates positions above it and writes the new
  maximum back before committing. Writers therefore commit in position order, and the
  row always holds the highest committed position: everything at or below it is
  visible to any reader.
- One room's events are created one at a time (`advisory_lock` on the room), so
  prev_events chain and transaction-ID dedup holds whichever worker a retry reaches.
- Singleton work (federation sending) runs on one worker at a time (`Leader`).

Session-level advisory locks live on a dedicated pooled connection; if anything goes
wrong while taking or releasing one, that connection is invalidated (closed), which
ends the PostgreSQL session and so releases every lock it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy import BigInteger, Column, String, Table, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from homeserver.storage.schema import metadata

log = logging.getLogger(__name__)

# One row per stream; only "main" (the server-wide stream) exists today.
stream_positions = Table(
    "stream_positions",
    metadata,
    Column("stream", String(32), primary_key=True),
    Column("position", BigInteger, nullable=False),
)

MAIN_STREAM = "main"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (collisions only cost contention)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


async def lock_stream(conn: AsyncConnection) -> int:
    """Lock the stream row until this transaction ends; return the committed position.

    In READ COMMITTED an UPDATE that waited for another writer's row lock re-reads the
    row once that writer commits, so the value returned is always the latest committed one.
    """
    value = await conn.scalar(
        update(stream_positions)
        .where(stream_positions.c.stream == MAIN_STREAM)
        .values(position=stream_positions.c.position)
        .returning(stream_positions.c.position)
    )
    if value is None:
        raise RuntimeError("stream_positions has no row; run `sotto migrate`")
    return int(value)


async def reserve_stream(conn: AsyncConnection, count: int) -> int:
    """`lock_stream`, and also move the row `count` positions ahead; returns the new value.

    The positions up to the returned value belong to this transaction: if it uses no more
    than those, it needs no `store_stream` before committing (one round trip fewer, and the
    stream row is locked for that much less time). Unused positions are simply skipped.
    """
    value = await conn.scalar(
        update(stream_positions)
        .where(stream_positions.c.stream == MAIN_STREAM)
        .values(position=stream_positions.c.position + count)
        .returning(stream_positions.c.position)
    )
    if value is None:
        raise RuntimeError("stream_positions has no row; run `sotto migrate`")
    return int(value)


async def store_stream(conn: AsyncConnection, position: int) -> None:
    await conn.execute(
        update(stream_positions).where(stream_positions.c.stream == MAIN_STREAM).values(position=position)
    )


async def read_stream(conn: AsyncConnection) -> int:
    """The highest committed position (no lock)."""
    value = await conn.scalar(
        select(stream_positions.c.position).where(stream_positions.c.stream == MAIN_STREAM)
    )
    return int(value or 0)


async def _discard(conn: AsyncConnection) -> None:
    """Close a connection for good, ending its session (and every advisory lock it held)."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()


class HeldLock:
    """A session-level advisory lock held on its own connection (see `acquire_lock`)."""

    __slots__ = ("conn", "key")

    def __init__(self, conn: AsyncConnection, key: int) -> None:
        self.conn = conn
        self.key = key


async def acquire_lock(engine: AsyncEngine, name: str) -> HeldLock:
    """Take the session-level advisory lock `name` (waiting for it); `release_lock` ends it."""
    key = lock_key(name)
    conn = await engine.connect()
    try:
        await conn.scalar(select(func.pg_advisory_lock(key)))
    except BaseException:
        # Cancelled or failed mid-way: we cannot know whether the lock is held.
        await asyncio.shield(_discard(conn))
        raise
    return HeldLock(conn, key)


async def release_lock(held: HeldLock) -> None:
    clean = False
    try:
        await held.conn.scalar(select(func.pg_advisory_unlock(held.key)))
        clean = True
    finally:
        if clean:
            await held.conn.close()
        else:
            await asyncio.shield(_discard(held.conn))


@asynccontextmanager
async def advisory_lock(engine: AsyncEngine, name: str) -> AsyncIterator[None]:
    """Hold the session-level advisory lock `name` for the duration of the block."""
    held = await acquire_lock(engine, name)
    try:
        yield
    finally:
        await release_lock(held)


Listener = Callable[[bool], Awaitable[None]]


class Leader:
    """Elects one process among the workers to own a named singleton job.

    On PostgreSQL the leader is whoever holds the session-level advisory lock `name`
    on a dedicated connection; it checks the connection every `check_s` seconds and
    steps down when it is lost (another worker then takes over within `retry_s`). A
    process that is killed loses the lock with its session. Without a shared database
    (SQLite: one process) every process is the leader at once.

    Listeners are called with True when this process becomes leader and False when it
    stops being leader, in order, never twice in a row with the same value.
    """

    def __init__(
        self,
        engine: AsyncEngine | None,
        name: str,
        *,
        retry_s: float = 2.0,
        check_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.name = name
        self.retry_s = retry_s
        self.check_s = check_s
        self.is_leader = False
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._elected = asyncio.Event()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def wait_elected(self) -> None:
        await self._elected.wait()

    async def start(self) -> None:
        if self.engine is None:
            await self._set(True)
            return
        self._task = asyncio.create_task(self._run(self.engine), name=f"leader:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._set(False)

    async def _set(self, value: bool) -> None:
        if value == self.is_leader:
            return
        self.is_leader = value
        if value:
            self._elected.set()
            log.info("this worker now leads %s", self.name)
        else:
            self._elected.clear()
            log.info("this worker no longer leads %s", self.name)
        for listener in self._listeners:
            try:
                await listener(value)
            except Exception:
                log.exception("leader listener for %s failed", self.name)

    async def _run(self, engine: AsyncEngine) -> None:
        key = lock_key(self.name)
        while True:
            conn: AsyncConnection | None = None
            try:
                conn = await engine.connect()
                if await conn.scalar(select(func.pg_try_advisory_lock(key))):
                    await self._set(True)
                    while True:
                        await asyncio.sleep(self.check_s)
                        await conn.scalar(select(literal(1)))
                else:
                    await conn.close()
                    conn = None
            except asyncio.CancelledError:
                if conn is not None:
                    await asyncio.shield(_discard(conn))
                raise
            except Exception as e:
                log.warning("leader election for %s: %s", self.name, type(e).__name__)
                if conn is not None:
                    await _discard(conn)
                await self._set(False)
            await asyncio.sleep(self.retry_s)
