"""Inserting many rows of one table at once, with as little per-row work as possible.

`BulkInsert(table, columns).run(conn, rows)` takes rows as tuples in `columns` order;
with `upsert_keys`, a row whose keys exist replaces that row's other columns (rows must
then have distinct keys, and are best sorted by them so concurrent writers lock rows in
one order); with `skip_existing`, a row whose key exists is left out, and `run` returns
how many were inserted.
On SQLite the statement is compiled once and handed to the driver's executemany as
is: SQLAlchemy's per-row parameter processing (a dict per row, type processors that
do nothing for these columns) cost about a third of such an insert. Other databases
get the ordinary Core executemany, unchanged.

Only for columns whose Python values the driver takes as they are (str, int, bool,
None): no JSON, dates or custom types.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, bindparam, insert, literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

Rows = list[tuple[Any, ...]]


class BulkInsert:
    __slots__ = ("_key", "_sqlite", "_stmts", "columns", "skip_existing", "table", "upsert_keys")

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
        self._stmts: dict[str, Any] = {}
        # An upsert row's keys, as a tuple.
        self._key = itemgetter(*(self.columns.index(k) for k in self.upsert_keys)) if upsert_keys else None
        # (SQL, positions of the row's values in the statement's parameter order)
        self._sqlite: tuple[str, tuple[int, ...] | None] | None = None

    def statement(self, dialect: str) -> Any:
        stmt = self._stmts.get(dialect)
        if stmt is None:
            values: dict[str, Any] = {c: bindparam(c) for c in self.columns}
            if not self.upsert_keys and not self.skip_existing:
                stmt = insert(self.table).values(values)
            else:
                make = postgresql.insert if dialect == "postgresql" else sqlite.insert
                ins = make(self.table).values(values)
                if self.skip_existing:
                    stmt = ins.on_conflict_do_nothing()
                    if dialect == "postgresql":
                        # A row per row inserted: the count (`run`) comes with the insert.
                        stmt = stmt.returning(literal_column("1"))
                else:
                    update = {c: ins.excluded[c] for c in self.columns if c not in self.upsert_keys}
                    stmt = ins.on_conflict_do_update(index_elements=list(self.upsert_keys), set_=update)
            self._stmts[dialect] = stmt
        return stmt

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
            columns = self.columns
            stmt = self.statement(conn.dialect.name)
            params = [dict(zip(columns, row, strict=True)) for row in rows]
            # One row is a plain execute, not an executemany of one.
            args = params[0] if len(params) == 1 else params
            if self.skip_existing:
                # SQLAlchemy batches the rows into multi-VALUES statements, RETURNING each.
                return len((await conn.execute(stmt, args)).all())
            await conn.execute(stmt, args)
            return -1
        sql, order = self._sqlite or self._compile(conn)
        if order is not None:
            rows = [tuple(row[i] for i in order) for row in rows]
        inserted: int = await conn.run_sync(_executemany, sql, rows)
        return inserted

    def _compile(self, conn: AsyncConnection) -> tuple[str, tuple[int, ...] | None]:
        compiled = self.statement(conn.dialect.name).compile(dialect=conn.dialect)
        names = compiled.positiontup or []
        order = tuple(self.columns.index(name) for name in names)
        assert len(order) == len(self.columns), (names, self.columns)
        self._sqlite = (str(compiled), None if order == tuple(range(len(order))) else order)
        return self._sqlite


def _executemany(conn: Connection, sql: str, rows: list[tuple[Any, ...]]) -> int:
    return int(conn.exec_driver_sql(sql, rows).rowcount)
