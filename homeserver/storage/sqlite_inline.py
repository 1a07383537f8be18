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
from sqlalchemy.engine.url import URL
from sqlalchemy.util.concurrency import await_, in_greenlet

DRIVER = "sotto_inline"


async def _done() -> None:
    return None


def _yield_to_async_layer() -> None:
    if in_greenlet():
        await_(_done())


class _Cursor:
    __slots__ = ("_cur",)

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, operation: str, parameters: Sequence[Any] = ()) -> _Cursor:
        _yield_to_async_layer()
        self._cur.execute(operation, parameters)
        return self

    def executemany(self, operation: str, seq: Sequence[Sequence[Any]]) -> _Cursor:
        _yield_to_async_layer()
        self._cur.executemany(operation, seq)
        return self

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)

    async def _async_soft_close(self) -> None:
        # The async layer's hook for cursors that must be closed by awaiting; rows are
        # already in sqlite3's hands and the cursor closes with the result.
        return None

    def __getattr__(self, name: str) -> Any:
        # fetchone/fetchmany/fetchall, description, rowcount, lastrowid, arraysize, close ...
        return getattr(self._cur, name)


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


dialect = SQLiteDialect_inline

registry.register(f"sqlite.{DRIVER}", __name__, "SQLiteDialect_inline")
