"""`sotto port-db`: move a homeserver from its SQLite file to PostgreSQL.

A server starts on SQLite (`make run`) and may later need workers, which need PostgreSQL.
This copies every table of the SQLite database into a PostgreSQL database, as Synapse's
`synapse_port_db` does:

- Both schemas are first brought up to date (`sotto migrate`), so both hold the same tables.
- The SQLite file is read in one `BEGIN IMMEDIATE` transaction: one consistent snapshot, and
  a server still running against the file cannot write while the copy runs (its writes
  wait, then fail). Stop the server first.
- Values PostgreSQL would refuse and SQLite stored (too long for their column, NULs in
  text, integers past 32 bits) are looked for first, in the same snapshot: if any, they are
  all named and nothing is copied.
- Each table is copied in one PostgreSQL transaction, in batches through `COPY` (asyncpg's
  `copy_records_to_table`), with progress on stdout. A table is therefore either copied in
  full or not at all, which is what makes `--resume` safe: it skips tables that already
  hold as many rows as the source and copies the empty ones.
- The target must be empty (apart from a resumed port's complete tables): nothing stored
  there is overwritten.
- Afterwards the stream sequence starts above every copied position (the rule
  `Database.load_stream_position` applies on SQLite), and serial columns continue after
  their highest value. Every table's row count is checked against the source.

Media files, the signing key and the config's other paths are not touched: only
`database.url` changes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    String,
    Table,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import NullPool

import homeserver.storage.all_schemas  # noqa: F401  (registers every table on metadata)
from homeserver.storage.engine import Database
from homeserver.storage.migrate import migrate
from homeserver.storage.postgres import STREAM_SEQUENCE
from homeserver.storage.schema import metadata

BATCH_ROWS = 5000
PROGRESS_EVERY_S = 2.0
# Tables of the SQLite file that are not the homeserver's data.
_NOT_DATA = ("alembic_version", "sqlite_")

Say = Callable[[str], None]


class PortError(Exception):
    """Why the port cannot go on (reported as one line; nothing in the target is left half-done)."""


@dataclass
class TableResult:
    name: str
    rows: int
    skipped: bool = False


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n:,} rows"


def _stream_column(column: Column[Any]) -> bool:
    # As Database.load_stream_position: positions taken from the one stream.
    return column.name == "stream_id" or bool(column.info.get("stream"))


def _sqlite_reader(path: str) -> Engine:
    """A synchronous engine on the SQLite file whose transactions are real `BEGIN IMMEDIATE`s
    (pysqlite would otherwise start none for reads: each SELECT would see its own moment)."""
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA busy_timeout = 10000")

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _probes(table: Table) -> list[tuple[str, str]]:
    """(SQLite condition, what it finds) for the values of `table` that PostgreSQL would
    refuse although SQLite stored them: it keeps no length limits or integer widths, and
    holds NUL characters in text."""
    out = []
    for c in table.c:
        q = f'"{c.name}"'
        if isinstance(c.type, String):  # Text too
            if c.type.length:
                out.append(
                    (f"length({q}) > {c.type.length}", f"{c.name}: longer than {c.type.length} characters")
                )
            out.append((f"instr(CAST({q} AS BLOB), x'00') > 0", f"{c.name}: a NUL character"))
        elif isinstance(c.type, Integer) and not isinstance(c.type, BigInteger):
            out.append((f"({q} < -2147483648 OR {q} > 2147483647)", f"{c.name}: beyond a 32-bit integer"))
    return out


def _unstorable(conn: Connection, tables: list[Table]) -> list[str]:
    """Every value of these tables that PostgreSQL would refuse, as lines naming the table,
    the column and the rows (by a condition, not by their keys: those may be secrets). One
    scan of each table, inside the port's snapshot."""
    found = []
    for table in tables:
        probes = _probes(table)
        if not probes:
            continue
        sums = ", ".join(f"sum(CASE WHEN {cond} THEN 1 ELSE 0 END)" for cond, _ in probes)
        counts = conn.exec_driver_sql(f'SELECT {sums} FROM "{table.name}"').one()
        for (cond, what), n in zip(probes, counts, strict=True):
            if n:
                found.append(f"{table.name}.{what}: {_rows(int(n))} (WHERE {cond})")
    return found


def _batches(conn: Connection, table: Table) -> Iterator[list[tuple[Any, ...]]]:
    # Ordered by the primary key: the same order on every run.
    order = list(table.primary_key.columns) or list(table.c)
    result = conn.execution_options(yield_per=BATCH_ROWS).execute(select(table).order_by(*order))
    for part in result.partitions(BATCH_ROWS):
        yield [tuple(row) for row in part]


@contextlib.contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    """The read transaction over the SQLite file, or why it could not start."""
    try:
        transaction = conn.begin()
    except OperationalError as e:
        raise PortError(
            f"cannot lock the SQLite file against writes ({e.orig}): stop the server using it first"
        ) from None
    with transaction:
        yield


async def _count(conn: AsyncConnection, table: Table) -> int:
    return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def _copy_table(
    target: Database, table: Table, rows: Iterator[list[tuple[Any, ...]]], total: int, say: Say
) -> int:
    columns = [c.name for c in table.c]
    copied = 0
    started = last = time.monotonic()
    async with target.engine.begin() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        for batch in rows:
            try:
                await driver.copy_records_to_table(table.name, records=batch, columns=columns)
            except Exception as e:  # a value refused (which the checks missed), or the connection
                raise PortError(
                    f"{table.name}: copying rows {copied + 1:,} to {copied + len(batch):,} (in primary "
                    f"key order) failed, nothing of the table is kept: {type(e).__name__}: {e}"
                ) from None
            copied += len(batch)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                rate = copied / (now - started)
                share = 100 * copied // max(total, 1)
                say(f"  {table.name}: {copied:,} of {total:,} rows ({share}%), {rate:,.0f} rows/s")
        stored = await _count(conn, table)
    if stored != total:
        raise PortError(f"{table.name}: {stored:,} rows in PostgreSQL after the copy, {total:,} in SQLite")
    return copied


async def _continue_sequences(target: Database) -> int:
    """Start the stream and the serial columns above what was copied; returns the highest
    stream position found."""
    best = 0
    async with target.engine.begin() as conn:
        for table in metadata.sorted_tables:
            for column in table.c:
                if _stream_column(column):
                    best = max(best, int(await conn.scalar(select(func.max(column))) or 0))
            serial = table.autoincrement_column
            if serial is not None:
                quote = conn.dialect.identifier_preparer.quote
                top = f"(SELECT max({quote(serial.name)}) FROM {quote(table.name)})"
                await conn.execute(
                    text(
                        f"SELECT setval(s, {top}, true) FROM pg_get_serial_sequence(:t, :c) AS s "
                        f"WHERE s IS NOT NULL AND {top} IS NOT NULL"
                    ),
                    {"t": table.name, "c": serial.name},
                )
        # As migration 0009 does: the sequence's last value at the highest position, so the
        # next chunk starts above it. Never backwards (a resumed port may have run this).
        await conn.execute(
            text(
                f"SELECT setval('{STREAM_SEQUENCE}', "
                f"GREATEST(:p, (SELECT last_value FROM {STREAM_SEQUENCE})), true)"
            ),
            {"p": max(best, 1)},
        )
    return best


async def port(
    source_url: str, target_url: str, base_dir: str, *, resume: bool, say: Say
) -> list[TableResult]:
    source = Database(source_url, base_dir)
    target = Database(target_url, base_dir)
    try:
        if not source.is_sqlite or source.url.database in (None, "", ":memory:"):
            raise PortError("the source must be a SQLite database file (sqlite:///path)")
        if not target.is_postgres:
            raise PortError("the target must be a PostgreSQL database (postgresql+asyncpg://...)")
        say("Bringing both schemas up to date ...")
        await migrate(source)
        await migrate(target)
        return await _port(source, target, resume=resume, say=say)
    finally:
        await source.close()
        await target.close()


async def _port(source: Database, target: Database, *, resume: bool, say: Say) -> list[TableResult]:
    tables = metadata.sorted_tables
    async with target.engine.connect() as pg:
        held = {t.name: await _count(pg, t) for t in tables}
    if any(held.values()) and not resume:
        names = ", ".join(sorted(n for n, c in held.items() if c))
        raise PortError(
            f"the target database already holds data ({names}); port into an empty database, "
            "or pass --resume to finish an interrupted port"
        )
    reader = _sqlite_reader(str(source.url.database))
    results: list[TableResult] = []
    started = time.monotonic()
    try:
        with reader.connect() as conn, _snapshot(conn):
            say("Checking that PostgreSQL can hold every value ...")
            unstorable = _unstorable(conn, [t for t in tables if not held[t.name]])
            if unstorable:
                raise PortError(
                    "PostgreSQL would refuse these values, which SQLite stored; nothing was copied. "
                    "Mend or delete those rows in the SQLite file, then run the port again:\n  "
                    + "\n  ".join(unstorable)
                )
            known = {t.name for t in tables}
            strays = sorted(
                n for n in inspect(conn).get_table_names() if n not in known and not n.startswith(_NOT_DATA)
            )
            if strays:
                say(f"Not copied (not Sotto's tables): {', '.join(strays)}")
            for table in tables:
                total = int(conn.scalar(select(func.count()).select_from(table)) or 0)
                if held[table.name]:
                    if held[table.name] != total:
                        raise PortError(
                            f"{table.name}: the target holds {held[table.name]:,} rows, the source "
                            f"{total:,}; was the target written to since the interrupted port?"
                        )
                    say(f"{table.name}: {_rows(total)}, already copied")
                    results.append(TableResult(table.name, total, skipped=True))
                    continue
                if total:
                    say(f"{table.name}: {_rows(total)} ...")
                    await _copy_table(target, table, _batches(conn, table), total, say)
                results.append(TableResult(table.name, total))
    finally:
        reader.dispose()
    position = await _continue_sequences(target)
    rows = sum(r.rows for r in results if not r.skipped)
    say(
        f"Copied {rows:,} rows into {sum(1 for r in results if r.rows and not r.skipped)} tables in "
        f"{time.monotonic() - started:.1f} s; new events continue after stream position {position:,}."
    )
    return results
