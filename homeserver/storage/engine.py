"""Database engine: connections, the write path and stream positions.

Invariant: all writes go through `Database.write()`, and stream positions are
allocated inside it (`next_stream_id()`); a sync at position N never misses a row at
or below N that commits later. `current_stream_id` is the highest position at or below
which everything is committed.

- SQLite (one process): one asyncio lock per process serialises writes and the
  counter lives in memory. Writers ready at the same moment share one transaction
  (group commit, see `_group_write`). Positions handed out in a rolled-back
  transaction are skipped, never reused.
- PostgreSQL (one or several worker processes): the asyncio lock still serialises a
  process's own writers, but transactions of different processes run side by side and
  may commit in any order. Each takes its positions from a shared sequence and holds a
  marker while open (see homeserver.storage.postgres), and `current_stream_id` only moves
  up to a position below every marker. A writer whose positions are not yet visible when
  it commits (a transaction of another worker with lower positions is still open) waits
  for that transaction before answering, so a client that got its answer reads its own
  write on any worker. Positions of a rolled-back transaction are skipped. Other workers'
  commits become visible here through `observe_stream_position()` (fed by Redis) or
  `refresh_stream_position()`. Reads run in autocommit mode: each statement sees the
  latest committed data, exactly as in a READ COMMITTED transaction, without the
  BEGIN/ROLLBACK round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import event, func, literal, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction, create_async_engine

from homeserver.storage import bulk as bulk_insert
from homeserver.storage import postgres, sqlite_inline
from homeserver.storage.bulk import BulkInsert, Rows
from homeserver.storage.gate import SEEN_POOL, ConnectionGate
from homeserver.tracing import DISABLED, Tracing

log = logging.getLogger(__name__)

# How often the SQLite WAL is checkpointed (when anything was written meanwhile). Each
# checkpoint holds the write lock (see Database._checkpoint_forever), so the WAL is rewritten
# from its start about this often and stays as large as this much writing.
CHECKPOINT_INTERVAL_S = 0.25
# PostgreSQL connections per process (a fixed pool: an overflow connection closed after each
# burst would be reopened, with its prepared statements, by the next one).
POOL_SIZE = 20
# Under a burst (a message to a room of thousands, each member's /sync recomputed, or
# thousands of first syncs) requests queue for a pooled connection in `ConnectionGate`, which never
# times out: waiting is better than failing them. The pool's own timeout only guards
# against a bug letting more checkouts through than the gate admits.
POOL_TIMEOUT_S = 60
# At most this many writers share one PostgreSQL transaction (group commit).
MAX_GROUP_WRITES = 64
# A writer waiting for another worker's transaction to end (so that its own positions become
# visible) checks again at least this often, whatever it is told meanwhile.
VISIBILITY_RECHECK_S = 1.0
# Session advisory locks (rooms, leadership) live on their own small pool, so a room-lock
# holder never waits for a connection that another room-lock holder keeps; at most this
# many rooms are locked at once per process.
LOCK_POOL_SIZE = 16
# A room's advisory lock is kept this long after its holder is done, so that the next batch
# of the same room in this process (the usual case under load) skips the lock and unlock
# round trips; at most ROOM_LOCK_REUSES times in a row, so other workers get their turn.
ROOM_LOCK_LINGER_S = 0.005
ROOM_LOCK_REUSES = 8


def unicode_lower(value: object) -> object:
    """SQLite's own lower() folds ASCII only; this one folds every script (Émile, Иван), as
    PostgreSQL's does. Registered on every SQLite connection as `unicode_lower`."""
    return value.lower() if isinstance(value, str) else value


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.create_function("unicode_lower", 1, unicode_lower, deterministic=True)
    cur = dbapi_conn.cursor()
    # WAL lets readers run while one writer commits; NORMAL sync is durable
    # against process crashes (kill -9) in WAL mode at a fraction of FULL's cost.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # Short: while another process (an admin command) holds the write lock, this loop waits.
    cur.execute("PRAGMA busy_timeout=2000")
    cur.execute("PRAGMA foreign_keys=ON")
    # Checkpoints (which fsync) run in a worker thread, not inside a commit on the event
    # loop (see Database._checkpoint_forever); SQLite checkpoints on its last close anyway.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database file; whether every frame was copied."""
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return not busy and frames == copied


class _WalCheckpointer:
    """The connection that checkpoints run on, kept open: opening one per pass parsed the
    whole schema each time (0.78 ms of CPU, against 0.006 ms for a checkpoint with little
    to copy; two passes every CHECKPOINT_INTERVAL_S under light load). Passes run in worker
    threads, one at a time; the lock keeps `close` from racing one still running."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def run(self) -> bool:
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, timeout=2, check_same_thread=False)
            try:
                return _checkpoint(self._conn)
            except sqlite3.Error:
                # Start afresh next time (the file may have been replaced or locked away).
                self._conn.close()
                self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _RoomLock:
    """One room's lock in this process, and the PostgreSQL advisory lock it may still hold."""

    __slots__ = ("__weakref__", "held", "local", "reaper", "reuses")

    def __init__(self) -> None:
        self.local = asyncio.Lock()
        self.held: postgres.HeldLock | None = None
        self.reuses = 0
        self.reaper: asyncio.TimerHandle | None = None


class BatchAborted(Exception):
    """A write whose transaction was rolled back because another write in it failed."""


class _Batch:
    """One open transaction shared by a group of writers (see "Group commit" in Database)."""

    __slots__ = (
        "conn",
        "deferred",
        "done",
        "failed",
        "gathered",
        "members",
        "top",
        "trans",
        "used",
        "visible_after",
    )

    def __init__(
        self, conn: AsyncConnection, trans: AsyncTransaction, top: int, visible_after: int | None = None
    ) -> None:
        self.conn = conn
        self.trans = trans
        # PostgreSQL: the last position of the chunk this transaction is drawing from.
        self.top = top
        # PostgreSQL: what readers may see once this commits, if known without asking again.
        self.visible_after = visible_after
        # The highest position handed out in this transaction (0: none).
        self.used = 0
        self.members = 0
        self.failed = False
        # SQLite: the batch has already waited once for more writers to join.
        self.gathered = False
        # Rows of members that deferred them (`Database.insert`), per statement in the order
        # first used, inserted together just before the commit (or another member's turn).
        self.deferred: dict[BulkInsert, Rows] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Database:
    def __init__(
        self, url: str, base_dir: str = ".", *, pool_size: int = POOL_SIZE, max_overflow: int = 0
    ) -> None:
        sa_url = make_url(url)
        self.is_sqlite = sa_url.get_backend_name() == "sqlite"
        self.is_postgres = sa_url.get_backend_name() == "postgresql"
        if self.is_sqlite and sa_url.database and sa_url.database != ":memory:":
            path = sa_url.database
            if not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            sa_url = sa_url.set(database=path)
        if self.is_sqlite:
            # sqlite+aiosqlite (or plain sqlite) URLs run in the loop's thread: see sqlite_inline.
            sa_url = sa_url.set(drivername=f"sqlite+{sqlite_inline.DRIVER}")
        if self.is_postgres and "prepared_statement_cache_size" not in sa_url.query:
            # asyncpg prepares every statement once per connection; the default cache (100)
            # is smaller than the set of statements a sync and a send run, so they churned.
            sa_url = sa_url.update_query_dict({"prepared_statement_cache_size": "512"})
        self.url = sa_url
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if sa_url.database and sa_url.database != ":memory:":
                # Connections are cheap and checkouts must never wait (they happen outside
                # the async layer, see _connect): no overflow limit.
                kwargs.update(pool_size=pool_size, max_overflow=-1)
        else:
            # No pre-ping (a round trip per checkout): a connection broken by a database
            # restart fails one request, and SQLAlchemy then recycles the whole pool.
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=POOL_TIMEOUT_S)
        self.engine: AsyncEngine = create_async_engine(sa_url, **kwargs)
        self._reader: AsyncEngine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT") if self.is_postgres else self.engine
        )
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._gate = ConnectionGate(pool_size + max_overflow, POOL_TIMEOUT_S) if self.is_postgres else None
        self._lock_engine: AsyncEngine | None = None
        if self.is_postgres:
            # Room locks plus a few leader elections.
            # A fixed pool: overflow connections would be closed and reopened all the time.
            self._lock_engine = create_async_engine(
                sa_url,
                pool_size=LOCK_POOL_SIZE + 4,
                max_overflow=0,
                pool_timeout=30,
                isolation_level="AUTOCOMMIT",
            )
        self._lock_slots = asyncio.Semaphore(LOCK_POOL_SIZE)
        # Set when no other process writes events to this database (PostgreSQL served by one
        # process, without workers): room locks are then this process's own, with no
        # advisory lock (two round trips per batch).
        self.sole_writer = False
        # Spans for the transactions requests wait for (set by build_homeserver).
        self.tracing: Tracing = DISABLED
        self._span_attributes = {"db.system.name": "sqlite" if self.is_sqlite else "postgresql"}
        self._write_lock = asyncio.Lock()
        # Group commit (PostgreSQL): the open transaction, and how many writers wait for the lock.
        self._batch: _Batch | None = None
        # The running member's deferred rows, when it opened its write with `defer=True`.
        self._member_rows: list[tuple[BulkInsert, Rows]] | None = None
        self._queued = 0
        self._room_locks: weakref.WeakValueDictionary[str, _RoomLock] = weakref.WeakValueDictionary()
        # Rooms whose advisory lock lingers after use (strong references until released).
        self._lingering: dict[str, _RoomLock] = {}
        self._reapers: set[asyncio.Task[None]] = set()
        self._stream_id = 0
        self._persisted = 0
        # Set (and replaced) whenever `current_stream_id` moves forward.
        self._advanced = asyncio.Event()
        self._visibility_lock = asyncio.Lock()
        file_db = self.is_sqlite and sa_url.database not in (None, "", ":memory:")
        self._sqlite_path = sa_url.database if file_db else None
        self._writes_since_checkpoint = 0
        self._checkpointer: asyncio.Task[None] | None = None
        self._wal = _WalCheckpointer(self._sqlite_path) if self._sqlite_path is not None else None

    @property
    def shared(self) -> bool:
        """Whether other processes may write to this database (stream positions live in it)."""
        return self.is_postgres

    @property
    def exclusive(self) -> bool:
        """Whether this process is the only one writing (SQLite, or PostgreSQL served by one
        process): caches of what is in the database then see every change."""
        return not self.shared or self.sole_writer

    @asynccontextmanager
    async def _connect(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        if self.is_sqlite:
            # Inline SQLite never waits: skip the async layer's greenlet and shielded-close
            # task per call (see sqlite_inline.DirectConnection).
            sync = engine.sync_engine.connect()
            try:
                yield sqlite_inline.DirectConnection(engine, sync)
            finally:
                sync.close()
            return
        gate = self._gate
        if gate is not None:
            await gate.acquire(priority=engine is not self._reader)
        try:
            conn = await engine.connect()
            try:
                yield conn
            finally:
                if engine is self._reader:
                    # An autocommit connection has no transaction to roll back: returning it to
                    # the pool does no I/O, so there is nothing for a shield (a task per use) to protect.
                    await conn.close()
                else:
                    await asyncio.shield(conn.close())
        finally:
            if gate is not None:
                gate.release()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        with self.tracing.span("db.read", self._span_attributes):
            async with self._connect(self._reader) as conn:
                yield conn

    @asynccontextmanager
    async def write(self, gather: bool = False, defer: bool = False) -> AsyncIterator[AsyncConnection]:
        """One transaction on the single write path; commits on normal exit.

        `gather` (SQLite): other writers are probably about to come (other rooms' batches
        are being built), so wait one turn of the event loop for them to join the commit.
        `defer`: rows this writer adds with `insert` are written together with those of the
        other deferring writers in its group, just before the commit (see `insert`).
        """
        if self._wal is not None and self._checkpointer is None:
            self._checkpointer = asyncio.create_task(self._checkpoint_forever(self._wal))
        self._writes_since_checkpoint += 1
        # The span runs until the group's commit is durable (the wait for the lock included).
        with self.tracing.span("db.write", self._span_attributes):
            self._queued += 1
            try:
                await self._write_lock.acquire()
            finally:
                self._queued -= 1
            async with self._group_write(gather, defer) as conn:
                yield conn

    async def insert(self, conn: AsyncConnection, bulk: BulkInsert, rows: Rows) -> None:
        """Insert rows inside the current `write()`.

        In a write opened with `defer=True` the rows are held, and every deferring member of
        the group commit has its rows of the same statement inserted in one statement, just
        before the commit (or before a member that does not defer runs, so that it reads
        what it always did). Ten rooms' batches of two messages then cost one insert per
        table instead of ten; on PostgreSQL one statement for every table (one round trip:
        `bulk.run_together`). Until then the rest of the deferring writer's own transaction
        does not see them: only for rows it does not read back. A member that fails drops
        its rows with its savepoint."""
        member = self._member_rows
        if member is None:
            await bulk.run(conn, rows)
        elif rows:
            assert not bulk.skip_existing, "a deferred insert cannot report what it skipped"
            member.append((bulk, rows))

    async def _insert_deferred(self, batch: _Batch) -> None:
        deferred, batch.deferred = batch.deferred, {}
        await bulk_insert.run_together(batch.conn, list(deferred.items()))

    # Group commit ---------------------------------------------------------------------------------
    # Writers that queue up behind one another share one transaction: the first runs in it
    # directly, each later one inside a savepoint (so its failure undoes only its own work),
    # and whoever finds nobody queued behind it commits, still holding the write lock. Every
    # member returns only once that commit is durable. On PostgreSQL one fsync (and one
    # stream marker) then covers the whole group instead of each write. On
    # SQLite a writer never waits inside its transaction (statements run inline), so nobody
    # would ever be queued: a writer that expects company (`write(gather=True)`: the event
    # creator while other rooms' batches are being built) yields to the event loop once before
    # committing, letting writers that are ready to run join. A commit writes every page the
    # transaction touched to the WAL, and ten rooms' small batches touched most of the same
    # pages ten times. Yielding unasked cost one room's sends a sixth of their throughput: the
    # room's next batch waited for the turn of the loop.

    async def _open_batch(self) -> _Batch:
        if not self.shared:
            sync = self.engine.sync_engine.connect()
            local = sqlite_inline.DirectConnection(self.engine, sync)
            try:
                local_trans = await local.begin()
            except BaseException:
                sync.close()
                raise
            return _Batch(local, local_trans, 0)
        # The write lock is held: go before every reader waiting for a connection.
        assert self._gate is not None
        await self._gate.acquire(priority=True)
        try:
            conn = await self.engine.connect()
        except BaseException:
            self._gate.release()
            raise
        try:
            trans = await conn.begin()
            first, blocked = await postgres.open_stream(conn)
        except BaseException:
            await asyncio.shield(self._close_batch_conn(conn))
            raise
        self._stream_id = first - 1
        top = first + postgres.STREAM_CHUNK - 1
        return _Batch(conn, trans, top, None if blocked else top)

    async def _finish_batch(self, batch: _Batch) -> None:
        try:
            if batch.failed:
                await batch.trans.rollback()
            else:
                await self._commit_batch(batch)
                batch.done.set_result(None)
        except BaseException as e:
            batch.failed = True
            if batch.members:
                batch.done.set_exception(e)
            if not isinstance(e, Exception):
                raise
        finally:
            if batch.failed and not batch.done.done():
                batch.done.set_exception(BatchAborted("an earlier write in the same transaction failed"))
            if batch.failed:
                # Nobody may be waiting: mark the exception as retrieved.
                batch.done.exception()
            await self._end_batch(batch)

    async def _commit_batch(self, batch: _Batch) -> None:
        await self._insert_deferred(batch)
        if not self.shared:
            await batch.trans.commit()
            return
        visible = batch.visible_after
        if visible is None:
            # Asked before COMMIT, leaving this transaction's own marker out: what readers
            # may see once it has committed (see homeserver.storage.postgres).
            visible = await postgres.visible_stream(batch.conn, others_only=True)
        await batch.trans.commit()
        self.observe_stream_position(visible)

    async def _end_batch(self, batch: _Batch) -> None:
        if not self.shared:
            # Everything allocated so far is now committed, or abandoned (SQLite skips the
            # positions of a rolled-back batch): readers may see it.
            self._persisted = self._stream_id
            sync = batch.conn.sync_connection
            if sync is not None:
                sync.close()
            return
        await asyncio.shield(self._close_batch_conn(batch.conn))

    async def _close_batch_conn(self, conn: AsyncConnection) -> None:
        try:
            await conn.close()
        finally:
            assert self._gate is not None
            self._gate.release()

    @asynccontextmanager
    async def _group_write(self, gather: bool, defer: bool) -> AsyncIterator[AsyncConnection]:
        # Called with the write lock held; releases it.
        batch = self._batch
        joined = False
        try:
            if batch is None:
                batch = self._batch = await self._open_batch()
            if batch.deferred and not defer:
                try:
                    await self._insert_deferred(batch)
                except BaseException:
                    batch.failed = True
                    raise
            # Later members run in a savepoint, which is never released (RELEASE would cost a
            # round trip and changes nothing: the commit ends them all).
            savepoint = f"sotto_w{batch.members}" if batch.members else None
            if savepoint is not None:
                try:
                    await batch.conn.exec_driver_sql(f"SAVEPOINT {savepoint}")
                except BaseException:
                    batch.failed = True
                    raise
            member: list[tuple[BulkInsert, Rows]] | None = [] if defer else None
            self._member_rows = member
            try:
                yield batch.conn
            except BaseException as e:
                if savepoint is None or isinstance(e, asyncio.CancelledError):
                    # The first member (nothing else to keep), or a connection in an unknown state.
                    batch.failed = True
                else:
                    try:
                        await batch.conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {savepoint}")
                    except BaseException:
                        batch.failed = True
                        raise
                raise
            finally:
                self._member_rows = None
            for bulk, rows in member or ():
                batch.deferred.setdefault(bulk, []).extend(rows)
            batch.members += 1
            joined = True
        finally:
            cancelled = False
            if (
                joined
                and gather
                and batch is not None
                and not batch.gathered
                and self._sqlite_path is not None
                and not self._queued
                and batch.members < MAX_GROUP_WRITES
            ):
                # Once per batch: each wait delays every member's return. Only with a database
                # file: an in-memory database is one connection, which readers would share
                # (and roll back when they return it to the pool) while the batch is open.
                batch.gathered = True
                try:
                    await asyncio.sleep(0)  # see "Group commit" above
                except asyncio.CancelledError:
                    # Commit (or hand over) all the same: the batch must not stay open.
                    cancelled = True
            try:
                if batch is not None and (
                    batch.failed or not self._queued or batch.members >= MAX_GROUP_WRITES
                ):
                    self._batch = None
                    await self._finish_batch(batch)
            finally:
                # Even if finishing raised (a writer cancelled mid-commit): a lock left held
                # here would hang every later write in this process.
                self._write_lock.release()
        if cancelled:
            raise asyncio.CancelledError
        if joined:
            assert batch is not None
            await asyncio.shield(batch.done)
            if batch.used > self._persisted:
                # Another worker's transaction with lower positions is still open: answer
                # once this write can be read, on any worker.
                await asyncio.shield(self.wait_visible(batch.used))

    async def next_stream_id(self) -> int:
        """Allocate a stream position. Only call inside `write()`."""
        assert self._write_lock.locked(), "stream ids are allocated on the write path"
        batch = self._batch
        assert batch is not None
        if self.shared and self._stream_id >= batch.top:
            first = await postgres.next_chunk(batch.conn)
            self._stream_id = first - 1
            batch.top = first + postgres.STREAM_CHUNK - 1
            # Other transactions may have taken the positions between the two chunks.
            batch.visible_after = None
        self._stream_id += 1
        batch.used = self._stream_id
        return self._stream_id

    async def next_stream_ids(self, count: int) -> list[int]:
        """`count` increasing stream positions (see `next_stream_id`)."""
        return [await self.next_stream_id() for _ in range(count)]

    async def wait_visible(self, position: int) -> None:
        """Wait until `current_stream_id` reaches `position` (PostgreSQL, after a commit).

        What holds it back is a write transaction of another process, with lower positions,
        still open: wait on its marker, then look again. One waiter asks the database at a
        time; news from Redis ends every wait early."""
        while self._persisted < position:
            advanced = self._advanced
            if self._visibility_lock.locked():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(VISIBILITY_RECHECK_S):
                        await advanced.wait()
                continue
            async with self._visibility_lock, self.read() as conn:
                if self._persisted >= position:
                    return
                visible, marker = await postgres.stream_state(conn)
                self.observe_stream_position(visible)
                if visible < position and marker is not None:
                    # The marker holding it back (visible is just below it): wait for its end.
                    await postgres.wait_for_marker(conn, marker, VISIBILITY_RECHECK_S)

    @property
    def current_stream_id(self) -> int:
        """The highest position whose transaction has finished: safe for readers."""
        return self._persisted

    def observe_stream_position(self, position: int) -> bool:
        """Record that everything up to `position` is committed (e.g. by another worker).

        Returns True if that moved `current_stream_id` forward."""
        if position > self._persisted:
            self._persisted = position
            self._advanced.set()
            self._advanced = asyncio.Event()
            return True
        return False

    async def refresh_stream_position(self) -> int:
        """Catch up with commits made by other processes; returns `current_stream_id`."""
        if self.shared:
            async with self.read() as conn:
                self.observe_stream_position(await postgres.visible_stream(conn))
        return self._persisted

    async def catch_up(self, position: int) -> None:
        """Make `current_stream_id` reach `position` if it is committed anywhere.

        A client's sync token may come from another worker that is ahead of this one."""
        if position > self._persisted and self.shared:
            await self.refresh_stream_position()

    async def load_stream_position(self) -> None:
        from homeserver.storage.schema import metadata

        best = 0
        async with self.read() as conn:
            if self.shared:
                # The migration started the sequence above every stored position.
                best = await postgres.visible_stream(conn)
            else:
                for table in metadata.sorted_tables:
                    for column in table.c:
                        # `stream_id` columns, and others holding positions taken from the
                        # stream (marked `info={"stream": True}`: sticky_events.position).
                        if column.name == "stream_id" or column.info.get("stream"):
                            value = (await conn.execute(select(func.max(column)))).scalar()
                            best = max(best, int(value or 0))
        self._stream_id = best
        self._persisted = best
        log.info("stream position loaded: %d", best)

    def room_lock(self, room_id: str) -> AbstractAsyncContextManager[None]:
        """Serialise event creation in one room: across every process sharing the database
        (an advisory lock), or within this one when it is the sole writer."""
        lock = self._room_locks.get(room_id)
        if lock is None:
            lock = _RoomLock()
            self._room_locks[room_id] = lock
        return self._room_lock(lock, room_id)

    def room_lock_kept(self, room_id: str) -> bool:
        """Inside `room_lock(room_id)`: whether this process kept the room's advisory lock
        from its previous use, so that no other process has held it in between."""
        lock = self._room_locks.get(room_id)
        if lock is None or not lock.local.locked():
            return False
        return self.sole_writer or (lock.held is not None and lock.reuses > 0)

    @asynccontextmanager
    async def _room_lock(self, lock: _RoomLock, room_id: str) -> AsyncIterator[None]:
        async with lock.local:
            if self._lock_engine is None or self.sole_writer:
                yield
                return
            if lock.reaper is not None:
                lock.reaper.cancel()
                lock.reaper = None
            if lock.held is None:
                await self._lock_slots.acquire()
                try:
                    lock.held = await postgres.acquire_lock(self._lock_engine, "room:" + room_id)
                except BaseException:
                    self._lock_slots.release()
                    raise
                lock.reuses = 0
                self._lingering[room_id] = lock
            else:
                lock.reuses += 1
            ok = False
            try:
                yield
                ok = True
            finally:
                if ok and lock.reuses < ROOM_LOCK_REUSES:
                    lock.reaper = asyncio.get_running_loop().call_later(
                        ROOM_LOCK_LINGER_S, self._reap_room_lock, lock, room_id
                    )
                else:
                    await asyncio.shield(self._release_room_lock(lock, room_id))

    async def _release_room_lock(self, lock: _RoomLock, room_id: str) -> None:
        held, lock.held = lock.held, None
        if self._lingering.get(room_id) is lock:
            del self._lingering[room_id]
        if held is None:
            return
        try:
            await postgres.release_lock(held)
        except Exception as e:
            # release_lock closed the session, which released the lock anyway.
            log.warning("releasing the lock of a room failed: %s", type(e).__name__)
        finally:
            self._lock_slots.release()

    def _reap_room_lock(self, lock: _RoomLock, room_id: str) -> None:
        lock.reaper = None
        if lock.local.locked() or lock.held is None:
            return  # in use again (it will linger or be released after that use)

        async def reap() -> None:
            async with lock.local:
                if lock.reaper is None:
                    await self._release_room_lock(lock, room_id)

        task = asyncio.create_task(reap())
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    def leader(self, name: str, *, retry_s: float = 2.0, check_s: float = 5.0) -> postgres.Leader:
        """A leader election for singleton work (see `postgres.Leader`); start() it to take part."""
        return postgres.Leader(self._lock_engine, name, retry_s=retry_s, check_s=check_s)

    async def ping(self, timeout: float = 2.0) -> bool:
        """Whether the database answers a trivial query within `timeout` seconds."""
        # Ahead of new requests waiting for a connection: a long queue in a burst is not an
        # unreachable database, and readiness must not take a busy worker out of rotation.
        SEEN_POOL.set(True)
        try:
            async with asyncio.timeout(timeout), self.read() as conn:
                await conn.scalar(select(literal(1)))
            return True
        except Exception:
            return False

    async def _checkpoint_forever(self, wal: _WalCheckpointer) -> None:
        """Copy the WAL into the database file now and then, off the event loop's thread.

        A checkpoint racing a stream of commits never catches up with them, and SQLite only
        starts the WAL over once a checkpoint has copied all of it: under steady writes the
        WAL grew by the whole write volume (1.8 GB in 12 s of sends), and every commit
        appended to fresh file blocks that the kernel first zeroes (a fifth of the send
        path's CPU). So a second pass runs with the write lock held, and the next commit
        rewrites the WAL from its start, in pages already cached. The first pass, beside the
        writers, leaves the second little to copy: holding the lock for the whole copy put
        the send p99 at load at 30 ms, against 14 ms this way.
        """
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            if self._writes_since_checkpoint == 0:
                continue
            self._writes_since_checkpoint = 0
            try:
                # Most of the copying runs beside the writers; then, with writes paused, only
                # what they committed meanwhile: a short pause, and the WAL can start over.
                # If no write ran meanwhile (light load), the first pass copied everything and
                # the next commit starts the WAL over anyway: no pause at all (a checkpoint's
                # fsyncs with the write lock held were in the latency tail there).
                quiet = not self._write_lock.locked()
                complete = await asyncio.to_thread(wal.run)
                if not (complete and quiet and self._writes_since_checkpoint == 0):
                    async with self._write_lock:
                        complete = await asyncio.to_thread(wal.run)
            except sqlite3.Error as e:
                log.warning("WAL checkpoint failed: %s", e)
            else:
                if not complete:
                    # A reader (or another process) still needs old frames; try again next time.
                    log.debug("WAL checkpoint incomplete")

    async def close(self) -> None:
        for room_id, lock in list(self._lingering.items()):
            if lock.reaper is not None:
                lock.reaper.cancel()
                lock.reaper = None
            if not lock.local.locked():
                await self._release_room_lock(lock, room_id)
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        if self._wal is not None:
            # Waits for a pass still running in its thread.
            await asyncio.to_thread(self._wal.close)
        await self.engine.dispose()
        if self._lock_engine is not None:
            await self._lock_engine.dispose()
