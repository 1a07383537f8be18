"""PostgreSQL specifics: shared stream positions, advisory locks and leader election.

Several worker processes may share one PostgreSQL database. Three things must hold
across them, and this module provides the primitives:

- Stream positions are unique, and a reader never skips a row that commits after it
  has read past that row's position. Positions come from the sequence `stream_seq`
  (migration 0009) in chunks of STREAM_CHUNK, so writers in every process run and commit
  side by side and in any order. Before it takes its first chunk, a write transaction
  takes a transaction-level shared advisory lock, its *marker*, keyed by a position no
  higher than any it will be given (the sequence's last value plus one chunk). Markers
  vanish when their transactions end (commit, rollback, or a killed worker's session).
  So everything at or below `min(end of the last chunk handed out, lowest marker - 1)`
  has either committed or will never exist (`visible_stream`); provided the sequence
  is read before the markers, which that statement orders.
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

from sqlalchemy import TextClause, func, literal, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

# Positions per nextval of `stream_seq`: its INCREMENT, set by migration 0009 (a test checks
# that they agree). A write transaction that needs more takes another chunk.
STREAM_CHUNK = 128
STREAM_SEQUENCE = "stream_seq"
# Markers use the two-int4 form of advisory keys (pg_locks.objsubid = 2), which nothing else
# here uses: room and leader locks use the one-bigint form. A position is split into its
# bits above and below bit 31, so that each half fits a non-negative int4.
_LOW_BITS = 31
_LOW_MASK = (1 << _LOW_BITS) - 1


def _lowest_marker(after: str, *, others_only: bool) -> str:
    """SQL for the lowest marker held in this database, evaluated after the row whose
    column `after` it is correlated with. Markers are the shared locks (exclusive ones are
    writers waiting on a marker); `others_only` leaves this session's own out."""
    mine = "AND l.pid <> pg_backend_pid()" if others_only else ""
    return f"""
        (SELECT min((l.classid::bigint << {_LOW_BITS}) + l.objid::bigint)
         FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.mode = 'ShareLock'
           AND {after} IS NOT NULL {mine}
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""


# The marker is taken before nextval: the CTEs are materialised (they call volatile
# functions), so each row, and with it the lock, exists before the next step reads it. The
# markers of other transactions are read last (correlated with the chunk, so after it).
_OPEN_STREAM = text(
    f"""
    WITH marker AS MATERIALIZED (
        SELECT pg_advisory_xact_lock_shared(
                   ((last_value + {STREAM_CHUNK}) >> {_LOW_BITS})::int4,
                   ((last_value + {STREAM_CHUNK}) & {_LOW_MASK})::int4
               ) AS locked
        FROM {STREAM_SEQUENCE}
    ),
    chunk AS MATERIALIZED (SELECT nextval('{STREAM_SEQUENCE}') AS first FROM marker)
    SELECT c.first, {_lowest_marker("c.first", others_only=True)}
    FROM chunk c
    """
)
_NEXT_CHUNK = text(f"SELECT nextval('{STREAM_SEQUENCE}')")


def _visible_statement(others_only: bool) -> TextClause:
    # The markers are read after the sequence row: reading them first would let a chunk
    # taken in between count as visible.
    return text(
        f"""
        SELECT s.last_value + {STREAM_CHUNK - 1}, {_lowest_marker("s.last_value", others_only=others_only)}
        FROM {STREAM_SEQUENCE} s
        """
    )


_VISIBLE = _visible_statement(False)
_VISIBLE_TO_OTHERS = _visible_statement(True)

# lock_timeout is set for this one-statement transaction only (is_local), before the wait.
_WAIT_MARKER = text(
    """
    WITH bound AS MATERIALIZED (SELECT set_config('lock_timeout', :timeout_ms, true) AS t)
    SELECT pg_advisory_xact_lock(CAST(:hi AS int4), CAST(:lo AS int4)) FROM bound
    """
)
_LOCK_NOT_AVAILABLE = "55P03"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (collisions only cost contention)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


async def open_stream(conn: AsyncConnection) -> tuple[int, bool]:
    """Take this transaction's marker and its first chunk, [first, first + STREAM_CHUNK - 1].

    Returns `first` and whether another transaction with lower positions was open then. If
    none was, the whole chunk is visible as soon as this transaction commits: transactions
    opened later get higher positions. Call once, inside the write transaction."""
    row = (await conn.execute(_OPEN_STREAM)).first()
    if row is None:
        raise RuntimeError(f"{STREAM_SEQUENCE} is missing; run `sotto migrate`")
    first, lowest_other = int(row[0]), row[1]
    # A marker is at most its holder's first position, and above ours only if it was taken
    # after our nextval (so its positions are higher than our chunk).
    return first, lowest_other is not None and int(lowest_other) <= first


async def next_chunk(conn: AsyncConnection) -> int:
    """Another chunk for a transaction that has used up its first (its marker still covers it)."""
    return int(await conn.scalar(_NEXT_CHUNK) or 0)


async def stream_state(conn: AsyncConnection, *, others_only: bool = False) -> tuple[int, int | None]:
    """(the highest position at or below which every write transaction has ended, the
    lowest marker still held, if any): both from one statement.

    With `others_only`, inside a write transaction: the same once this transaction commits
    (its own marker is left out)."""
    row = (await conn.execute(_VISIBLE_TO_OTHERS if others_only else _VISIBLE)).first()
    if row is None:
        raise RuntimeError(f"{STREAM_SEQUENCE} is missing; run `sotto migrate`")
    top, lowest = int(row[0]), None if row[1] is None else int(row[1])
    return (top if lowest is None else min(top, lowest - 1)), lowest


async def visible_stream(conn: AsyncConnection, *, others_only: bool = False) -> int:
    """The first half of `stream_state`."""
    return (await stream_state(conn, others_only=others_only))[0]


async def lowest_marker(conn: AsyncConnection) -> int | None:
    """The second half of `stream_state`: the lowest marker of a write transaction still open."""
    return (await stream_state(conn))[1]


async def wait_for_marker(conn: AsyncConnection, marker: int, timeout_s: float) -> bool:
    """Wait until every transaction holding `marker` has ended (autocommit connection);
    False if they still hold it after `timeout_s`.

    The exclusive lock is granted once the shared holders let go, and released again at
    the end of this one-statement transaction. The database bounds the wait, so the
    connection is never left mid-statement by a cancellation."""
    params = {"hi": marker >> _LOW_BITS, "lo": marker & _LOW_MASK, "timeout_ms": str(int(timeout_s * 1000))}
    try:
        await conn.execute(_WAIT_MARKER, params)
    except DBAPIError as e:
        if getattr(e.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            return False
        raise
    return True


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
        # Step down before the lock goes: told afterwards, this process still thought itself
        # the leader while another had taken over (two leaders at once, briefly).
        await self._set(False)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

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
