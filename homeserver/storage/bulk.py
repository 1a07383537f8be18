"""Inserting many rows of one table at once, with as little per-row work as possible.

`BulkInsert(table, columns).run(conn, rows)` takes rows as tuples in `columns` order;
with `upsert_keys`, a row whose keys exist replaces that row's other columns (rows must
then have distinct keys, and are best sorted by them so concurrent writers lock rows in
one order); with `skip_existing`, a row whose key exists is left out, and `run` returns
how many were inserted.
On SQLite the statement is compiled once and handed to the driver's executemany as
is: SQLAlchemy's per-row parameter processing (a dict per row, type processors that
do nothing for these columns) cost about a third of such an insert. On PostgreSQL the
rows go as one array per column into one `INSERT … SELECT FROM unnest(…)`: a single
execution on the server, where an executemany runs the statement once per row, and
`run_together` puts several tables' inserts into one statement (one round trip).

Only for columns whose Python values the driver takes as they are (str, int, bool,
None): no JSON, dates or custom types.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

Rows = list[tuple[Any, ...]]


# Statements for PostgreSQL are written out here (identifiers quoted by its dialect).
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


class BulkInsert:
    __slots__ = ("_key", "_pg", "_sqlite", "columns", "skip_existing", "table", "upsert_keys")

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        *,
        upsert_keys: Sequence[str] = (),
        skip_existing: bool = False,
    ) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.upsert_keys = tuple(upsert_keys)
        self.skip_existing = skip_existing
        # An upsert row's keys, as a tuple.
        self._key = itemgetter(*(self.columns.index(k) for k in self.upsert_keys)) if upsert_keys else None
        # SQLite: (SQL, positions of the row's values in the statement's parameter order)
        self._sqlite: tuple[str, tuple[int, ...] | None] | None = None
        # PostgreSQL: the SQL of `run` (built on first use).
        self._pg: str | None = None

    def merge(self, rows: Rows) -> Rows:
        """Rows of several writers as one set: an upsert keeps the last row for each key
        (an upsert statement may not touch a row twice), sorted by key."""
        key = self._key
        if key is None or len(rows) < 2:
            return rows
        return sorted({key(row): row for row in rows}.values(), key=key)

    async def run(self, conn: AsyncConnection, rows: Rows) -> int:
        if not rows:
            return 0
        if conn.dialect.name != "sqlite":
            # One statement may not upsert a row twice (an executemany, row by row, could).
            rows = self.merge(rows)
            if self._pg is None:
                self._pg = self.unnest_sql(1)
            result = await conn.exec_driver_sql(self._pg, columns_of(rows))
            # The status line's count: rows inserted, those skipped on conflict left out.
            return int(result.rowcount) if self.skip_existing else -1
        sql, order = self._sqlite or self._compile(conn)
        if order is not None:
            rows = [tuple(row[i] for i in order) for row in rows]
        inserted: int = await conn.run_sync(_executemany, sql, rows)
        return inserted

    def unnest_sql(self, first: int) -> str:
        """PostgreSQL: the insert of every row, one array parameter per column (cast to the
        column's type), numbered from `first`. Built once by each caller, not per call."""
        quote = _PG.identifier_preparer.quote
        names = ", ".join(quote(c) for c in self.columns)
        types = (self.table.c[c].type.compile(dialect=_PG) for c in self.columns)
        arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(types))
        table = _PG.identifier_preparer.format_table(self.table)
        sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})"
        if self.skip_existing:
            sql += " ON CONFLICT DO NOTHING"
        elif self.upsert_keys:
            keys = ", ".join(quote(k) for k in self.upsert_keys)
            rest = (c for c in self.columns if c not in self.upsert_keys)
            sets = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in rest)
            sql += f" ON CONFLICT ({keys}) DO UPDATE SET {sets}"
        return sql

    def _compile(self, conn: AsyncConnection) -> tuple[str, tuple[int, ...] | None]:
        values: dict[str, Any] = {c: bindparam(c) for c in self.columns}
        stmt: Any = insert(self.table).values(values)
        if self.upsert_keys or self.skip_existing:
            ins = sqlite.insert(self.table).values(values)
            if self.skip_existing:
                stmt = ins.on_conflict_do_nothing()
            else:
                update = {c: ins.excluded[c] for c in self.columns if c not in self.upsert_keys}
                stmt = ins.on_conflict_do_update(index_elements=list(self.upsert_keys), set_=update)
        compiled = stmt.compile(dialect=conn.dialect)
        names = compiled.positiontup or []
        order = tuple(self.columns.index(name) for name in names)
        assert len(order) == len(self.columns), (names, self.columns)
        self._sqlite = (str(compiled), None if order == tuple(range(len(order))) else order)
        return self._sqlite


def columns_of(rows: Rows) -> tuple[list[Any], ...]:
    """Rows as one list per column (PostgreSQL's arrays)."""
    return tuple(list(column) for column in zip(*rows, strict=True))


async def run_together(conn: AsyncConnection, pending: list[tuple[BulkInsert, Rows]]) -> None:
    """Run several inserts (each bulk's rows merged first, see `merge`). On PostgreSQL,
    inserts into different tables share one statement (data-modifying CTEs): one round
    trip instead of one each. Two inserts into one table go in separate statements, since
    one statement may not touch a row twice."""
    pending = [(bulk, bulk.merge(rows)) for bulk, rows in pending if rows]
    if conn.dialect.name == "sqlite" or len(pending) < 2:
        for bulk, rows in pending:
            await bulk.run(conn, rows)
        return
    while pending:
        group: list[tuple[BulkInsert, Rows]] = []
        later: list[tuple[BulkInsert, Rows]] = []
        tables: set[Table] = set()
        for item in pending:
            (later if item[0].table in tables else group).append(item)
            tables.add(item[0].table)
        params: list[list[Any]] = []
        for _bulk, rows in group:
            params.extend(columns_of(rows))
        await conn.exec_driver_sql(_together_sql(tuple(bulk for bulk, _ in group)), tuple(params))
        pending = later


@functools.lru_cache(maxsize=64)
def _together_sql(bulks: tuple[BulkInsert, ...]) -> str:
    first = 1
    parts = []
    for bulk in bulks:
        parts.append(bulk.unnest_sql(first))
        first += len(bulk.columns)
    *ctes, last = parts
    if not ctes:
        return last
    return "WITH " + ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(ctes)) + " " + last


def _executemany(conn: Connection, sql: str, rows: list[tuple[Any, ...]]) -> int:
    return int(conn.exec_driver_sql(sql, rows).rowcount)
