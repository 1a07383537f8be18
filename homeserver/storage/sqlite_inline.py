"""SQLite for the async engine, run in the event loop's own thread.

aiosqlite sends every call (execute, fetch, commit, the pool's rollback) to a
helper thread and back; on this server's small indexed queries that round trip
costs several times the query itself. This dialect (`sqlite+sotto_inline`) is the
stock pysqlite dialect marked async, over a DBAPI shim that runs each sqlite3 call
directly. SQLAlchemy's async layer wants to see at least one await per statement,
so `execute` awaits an already-finished coroutine: two greenlet switches, no trip
through the event loop.

Why blocking calls are acceptable here: queries are indexed and take microseconds;
WAL mode lets readers run while the one writer holds its transaction; and all of
a process's writes are serialised by `Database.write()`, so a statement never waits
for SQLite's write lock held by this same process (which would block the loop it
needs to make progress). Another process holding the write lock (an admin command)
stalls the loop for at most `busy_timeout`, which the engine keeps short.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import Connection
from sqlalchemy.engine.url import URL
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util.concurrency import await_, in_greenlet

DRIVER = "sotto_inline"


async def _done() -> None:
    return None


def _yield_to_async_layer() -> None:
    if in_greenlet():
        await_(_done())


class _Cursor:
    """Runs a statement to completion at once and serves the rows from memory.

    A sqlite3 SELECT that is not stepped to its end keeps its read transaction (its WAL
    snapshot) open, and a pooled connection would carry that stale snapshot into its next
    checkout; fetching everything in `execute` finishes every statement right away, as
    the aiosqlite adapter does.
    """

    __slots__ = ("_cur", "_pos", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur
        self._rows: list[Any] = []
        self._pos = 0
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def _finish(self) -> None:
        cur = self._cur
        self.description = cur.description
        self._rows = cur.fetchall() if cur.description is not None else []
        self._pos = 0
        self.rowcount = cur.rowcount
        self.lastrowid = cur.lastrowid

    def execute(self, operation: str, parameters: Sequence[Any] = ()) -> _Cursor:
        _yield_to_async_layer()
        self._cur.execute(operation, parameters)
        self._finish()
        return self

    def executemany(self, operation: str, seq: Sequence[Sequence[Any]]) -> _Cursor:
        _yield_to_async_layer()
        self._cur.executemany(operation, seq)
        self._finish()
        return self

    def fetchone(self) -> Any:
        if self._pos < len(self._rows):
            row = self._rows[self._pos]
            self._pos += 1
            return row
        return None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        end = self._pos + (size or self.arraysize)
        rows = self._rows[self._pos : end]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        rows = self._rows[self._pos :]
        self._pos = len(self._rows)
        return rows

    def close(self) -> None:
        self._rows = []
        self._cur.close()

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row

    async def _async_soft_close(self) -> None:
        # The async layer's hook for cursors that must be closed by awaiting: the rows are
        # already in memory and the statement is finished.
        return None

    def setinputsizes(self, *args: Any) -> None:
        return None

    def setoutputsize(self, *args: Any) -> None:
        return None


class _Connection:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        object.__setattr__(self, "_conn", conn)

    def cursor(self) -> _Cursor:
        return _Cursor(self._conn.cursor())

    def __getattr__(self, name: str) -> Any:
        # commit, rollback, close, create_function, isolation_level, in_transaction ...
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)


class _DBAPI:
    """The sqlite3 module, except that connections come wrapped."""

    paramstyle = "qmark"

    def __init__(self) -> None:
        self.sqlite = sqlite3

    def connect(self, *args: Any, **kwargs: Any) -> _Connection:
        return _Connection(sqlite3.connect(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(sqlite3, name)


class SQLiteDialect_inline(SQLiteDialect_pysqlite):
    driver = DRIVER
    is_async = True
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        # The async-aware queue: a coroutine waiting for a connection yields to the loop.
        return pool.AsyncAdaptedQueuePool if cls._is_url_file_db(url) else pool.StaticPool


class DirectConnection(AsyncConnection):
    """An AsyncConnection whose statements run at once, with no greenlet in between.

    With the inline driver nothing ever needs to wait, so the async layer's greenlet per
    call is pure overhead; `Database` hands these out for SQLite. Only what the stores
    use is provided directly: execute, scalar, scalars and run_sync.
    """

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self._proxied.execute(statement, parameters, execution_options=execution_options)

    async def scalar(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self._proxied.scalar(statement, parameters, execution_options=execution_options)

    async def scalars(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self._proxied.scalars(statement, parameters, execution_options=execution_options)

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> Any:
        return self._proxied.exec_driver_sql(statement, parameters, execution_options)

    async def run_sync(self, fn: Any, *arg: Any, **kw: Any) -> Any:
        return fn(self._proxied, *arg, **kw)

    @property
    def _proxied(self) -> Connection:
        conn = self.sync_connection
        assert conn is not None
        return conn


def driver_connection(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under a connection of this dialect."""
    wrapped: Any = conn.connection.driver_connection
    raw: sqlite3.Connection = wrapped._conn
    return raw


dialect = SQLiteDialect_inline

registry.register(f"sqlite.{DRIVER}", __name__, "SQLiteDialect_inline")
