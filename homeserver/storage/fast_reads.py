"""Hot reads run on the driver connection, past SQLAlchemy's per-statement work.

A woken long-poll `/sync` runs two statements of its own (its user's memberships with the
probe, and its unread counts); a message to a room of 1,000 runs them 1,000 times.
Measured per statement (process CPU, the one-row probe): on loopback PostgreSQL 15,
SQLAlchemy Core `execute` 190 µs against asyncpg `fetch` of the same SQL 65-90 µs; on
SQLite (inline, see sqlite_inline) 32 µs against 7 µs. The rest of a read (the gate, the
pool's checkout) is SQLAlchemy's as before.

`FastQuery(statement)` compiles a Core statement once per database (positional
parameters; casts on PostgreSQL). `rows(conn, params)` runs it:
- on an autocommit PostgreSQL connection (every `Database.read()`): asyncpg `fetch` on the
  connection's driver connection. Any error, cancellation included, invalidates the
  connection (it may be broken, or mid-statement) as SQLAlchemy does, and is raised as
  SQLAlchemy's `DBAPIError`, which is what callers saw before;
- on a PostgreSQL connection inside a transaction: `conn.execute`;
- on SQLite: sqlite3's `execute` and `fetchall` on the driver connection (as the inline
  dialect's cursor does), errors raised as SQLAlchemy's; `conn.execute` when the
  statement has expanding parameters.
Rows are asyncpg Records, sqlite3 tuples or SQLAlchemy Rows: all unpack and index alike;
values are the driver's (SQLite booleans are 0 and 1). The engine's
`before_cursor_execute` listeners, if any, are told of the statement.

Expanding `IN` parameters cannot be compiled once (they render one placeholder per value):
for PostgreSQL give a statement comparing with `= ANY(array)` instead (`in_array`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import String, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.storage import sqlite_inline


def in_array(column: Any, name: str) -> Any:
    """`column = ANY(:name)`, the bound value a list of strings (PostgreSQL only)."""
    return column == any_(bindparam(name, type_=ARRAY(String)))


_PG = PGDialect_asyncpg(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
_SQLITE = sqlite_inline.SQLiteDialect_inline()


class _Compiled:
    __slots__ = ("defaults", "names", "sql")

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        if any(b.expanding for b in compiled.binds.values()):
            # Rendered one placeholder per value at each execution. For a list fixed in
            # the code use `in_` of `literal`s; for one bound per call, `in_array`.
            raise ValueError("an expanding IN parameter cannot be compiled once")
        self.sql = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Values bound in the statement itself (literals); the caller's parameters win.
        self.defaults = {k: v for k, v in compiled.construct_params(_check=False).items() if v is not None}

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[n] if n in params else self.defaults[n] for n in self.names]


class FastQuery:
    __slots__ = ("_pg", "_sqlite", "pg_statement", "statement")

    def __init__(self, statement: Any, pg_statement: Any = None) -> None:
        self.statement = statement
        self.pg_statement = statement if pg_statement is None else pg_statement
        self._pg: _Compiled | None = None
        # False: the statement has expanding parameters, and SQLAlchemy runs it.
        self._sqlite: _Compiled | bool | None = None

    @property
    def compiled(self) -> _Compiled:
        """The PostgreSQL form."""
        if self._pg is None:
            self._pg = _Compiled(self.pg_statement, _PG)
        return self._pg

    def _compiled_sqlite(self) -> _Compiled | None:
        if self._sqlite is None:
            try:
                self._sqlite = _Compiled(self.statement, _SQLITE)
            except ValueError:
                self._sqlite = False
        return self._sqlite if isinstance(self._sqlite, _Compiled) else None

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Sequence[Any]:
        if conn.dialect.name == "sqlite":
            return self._sqlite_rows(conn, params)
        sync = conn.sync_connection
        assert sync is not None
        if sync.invalidated:
            return (await conn.execute(self.pg_statement, dict(params))).all()  # it reconnects
        # A checked-out connection's pool proxy, read without `get_raw_connection`'s
        # greenlet (~10 µs, against ~70 µs for the whole statement).
        fairy = sync.connection
        adapted: Any = fairy.dbapi_connection
        if not getattr(adapted, "autocommit", False):
            # Inside a transaction the adapter begins lazily: let it.
            return (await conn.execute(self.pg_statement, dict(params))).all()
        pg = self.compiled
        args = pg.args(params)
        _tell_listeners(conn, pg.sql, args)
        driver: Any = fairy.driver_connection
        try:
            rows: Sequence[Any] = await driver.fetch(pg.sql, *args)
            return rows
        except BaseException as e:
            fairy.invalidate(e)
            if isinstance(e, Exception):
                raise DBAPIError(pg.sql, None, e, connection_invalidated=True) from e
            raise

    def _sqlite_rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Sequence[Any]:
        compiled = self._compiled_sqlite()
        sync = conn.sync_connection
        assert sync is not None
        if compiled is None:
            return sync.execute(self.statement, dict(params)).all()
        args = compiled.args(params)
        _tell_listeners(conn, compiled.sql, args)
        try:
            return sqlite_inline.driver_connection(sync).execute(compiled.sql, args).fetchall()
        except sqlite3.OperationalError as e:
            raise OperationalError(compiled.sql, args, e) from e
        except sqlite3.Error as e:
            raise DBAPIError(compiled.sql, args, e) from e


def _tell_listeners(conn: AsyncConnection, sql: str, args: list[Any]) -> None:
    """Whoever counts or logs statements (the tests do) still sees this one; the cursor
    is None."""
    for listener in conn.sync_engine.dispatch.before_cursor_execute:
        listener(conn.sync_connection, None, sql, args, None, False)
