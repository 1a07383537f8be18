"""Hot reads on PostgreSQL run on the driver connection, past SQLAlchemy's per-statement work.

A woken long-poll `/sync` runs two statements of its own (its user's memberships with the
probe, and its unread counts); a message to a room of 1,000 runs them 1,000 times.
Measured on loopback PostgreSQL 15 (process CPU per statement, the one-row probe):
SQLAlchemy Core `execute` 190 µs, asyncpg `fetch` of the same SQL 65-90 µs. The rest of a
read (the gate, the pool's checkout: ~46 µs) is SQLAlchemy's as before.

`FastQuery(statement)` compiles a Core statement once for asyncpg (`$n` parameters, with
casts). `rows(conn, params)` runs it:
- on an autocommit PostgreSQL connection (every `Database.read()`): asyncpg `fetch` on the
  connection's driver connection. Any error, cancellation included, invalidates the
  connection (it may be broken, or mid-statement) as SQLAlchemy does, and is raised as
  SQLAlchemy's `DBAPIError`, which is what callers saw before;
- anywhere else (SQLite, or a connection inside a transaction): `conn.execute`.
Rows are asyncpg Records or SQLAlchemy Rows: both unpack and index alike. The engine's
`before_cursor_execute` listeners, if any, are told of the statement.

Expanding `IN` parameters cannot be compiled once (they render one placeholder per value);
give a PostgreSQL statement comparing with `= ANY(array)` instead (`in_array`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import String, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection


def in_array(column: Any, name: str) -> Any:
    """`column = ANY(:name)`, the bound value a list of strings (PostgreSQL only)."""
    return column == any_(bindparam(name, type_=ARRAY(String)))


class _Compiled:
    __slots__ = ("defaults", "names", "sql")

    def __init__(self, statement: Any) -> None:
        dialect = PGDialect_asyncpg(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
        compiled = statement.compile(dialect=dialect)
        if any(b.expanding for b in compiled.binds.values()):
            # Rendered one placeholder per value at each execution. For a list fixed in
            # the code use `in_` of `literal`s; for one bound per call, `in_array`.
            raise ValueError("an expanding IN parameter cannot be compiled once")
        self.sql = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Values bound in the statement itself (literals); the caller's parameters win.
        self.defaults = {k: v for k, v in compiled.construct_params(_check=False).items() if v is not None}


class FastQuery:
    __slots__ = ("_pg", "pg_statement", "statement")

    def __init__(self, statement: Any, pg_statement: Any = None) -> None:
        self.statement = statement
        self.pg_statement = statement if pg_statement is None else pg_statement
        self._pg: _Compiled | None = None

    @property
    def compiled(self) -> _Compiled:
        if self._pg is None:
            self._pg = _Compiled(self.pg_statement)
        return self._pg

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Sequence[Any]:
        if conn.dialect.name != "postgresql":
            return (await conn.execute(self.statement, dict(params))).all()
        fairy = await conn.get_raw_connection()
        adapted: Any = fairy.dbapi_connection
        if not getattr(adapted, "autocommit", False):
            # Inside a transaction the adapter begins lazily: let it.
            return (await conn.execute(self.pg_statement, dict(params))).all()
        pg = self.compiled
        args = [params[n] if n in params else pg.defaults[n] for n in pg.names]
        listeners = conn.sync_engine.dispatch.before_cursor_execute
        if listeners:
            # Whoever counts or logs statements (the tests do) still sees this one.
            for listener in listeners:
                listener(conn.sync_connection, None, pg.sql, args, None, False)
        driver: Any = fairy.driver_connection
        try:
            rows: Sequence[Any] = await driver.fetch(pg.sql, *args)
            return rows
        except BaseException as e:
            fairy.invalidate(e)
            if isinstance(e, Exception):
                raise DBAPIError(pg.sql, None, e, connection_invalidated=True) from e
            raise
