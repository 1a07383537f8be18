"""Deferred inserts in a group commit (`Database.insert` in a `write(defer=True)`): the rows
of every deferring writer in one transaction go in as one insert per table (on PostgreSQL
one statement for all tables), a failing writer's rows are left out, and a writer that does
not defer still reads them. And `BulkInsert` itself: values, conflicts and counts. On SQLite
and on PostgreSQL (one process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import BigInteger, Boolean, Column, MetaData, String, Table, Text, select
from sqlalchemy import event as sa_event

from homeserver.storage.bulk import BulkInsert, run_together
from homeserver.storage.engine import Database
from tests.support.database import inserted_tables
from tests.support.postgres import fresh_database

_meta = MetaData()
probe = Table(
    "deferred_probe", _meta, Column("name", String(64), primary_key=True), Column("pos", BigInteger)
)
latest = Table(
    "deferred_latest", _meta, Column("key", String(64), primary_key=True), Column("pos", BigInteger)
)
mixed = Table(
    "deferred_mixed",
    _meta,
    Column("key", String(64), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("note", Text, nullable=True),
)
INSERT_PROBE = BulkInsert(probe, ("name", "pos"))
UPSERT_LATEST = BulkInsert(latest, ("key", "pos"), upsert_keys=("key",))
# The columns in another order than the table's.
MIXED_COLUMNS = ("note", "key", "flag", "n")
INSERT_MIXED = BulkInsert(mixed, MIXED_COLUMNS)
ADD_MIXED = BulkInsert(mixed, MIXED_COLUMNS, skip_existing=True)
UPSERT_MIXED = BulkInsert(mixed, MIXED_COLUMNS, upsert_keys=("key",))


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"
        else:
            # `.ci/run` starts PostgreSQL: without it this test fails rather than skips.
            url = await stack.enter_async_context(fresh_database())
        database = Database(url)
        stack.push_async_callback(database.close)
        yield await _prepared(database, request.param)


async def _prepared(database: Database, kind: str) -> Database:
    # The first connection goes through the async engine (as `migrate` does at start-up).
    async with database.engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    if kind == "postgres":
        await database.load_stream_position()  # the migrated database's stream
    return database


def _count_inserts(db: Database) -> tuple[list[list[str]], Any]:
    """The statements that insert, each as the tables it inserts into (an executemany
    counts once; on PostgreSQL one statement may insert into several tables)."""
    statements: list[list[str]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        tables = inserted_tables(statement)
        if tables:
            statements.append(tables)

    sa_event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    return statements, seen


async def _rows(db: Database, table: Table) -> dict[str, int]:
    async with db.read() as conn:
        return {r[0]: r[1] for r in await conn.execute(select(table))}


async def test_deferring_writers_share_one_insert_per_table_and_a_failure_stays_its_own(
    db: Database,
) -> None:
    release = asyncio.Event()

    async def writer(name: str) -> int:
        async with db.write(gather=True, defer=True) as conn:
            if name == "first":
                await release.wait()  # the others queue up behind it: one transaction
            pos = await db.next_stream_id()
            await db.insert(conn, INSERT_PROBE, [(f"{name}-1", pos), (f"{name}-2", pos)])
            await db.insert(conn, UPSERT_LATEST, [(name, pos), ("shared-" + name, pos)])
            if name == "bad":
                raise ValueError("this writer fails after its inserts")
        return pos

    counts, listener = _count_inserts(db)
    try:
        names = ["first", "a", "bad", "b", "c"]
        tasks = [asyncio.create_task(writer(n)) for n in names]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        sa_event.remove(db.engine.sync_engine, "before_cursor_execute", listener)
    assert isinstance(results[2], ValueError)
    good = {n: p for n, p in zip(names, results, strict=True) if n != "bad"}
    assert await _rows(db, probe) == {f"{n}-{i}": p for n, p in good.items() for i in (1, 2)}
    assert await _rows(db, latest) == {k: p for n, p in good.items() for k in (n, "shared-" + n)}
    # Four writers' rows, each table in one insert (without deferring: four each); on
    # PostgreSQL both tables in one statement.
    if db.engine.dialect.name == "postgresql":
        assert sorted(map(sorted, counts)) == [["deferred_latest", "deferred_probe"]]
    else:
        assert sorted(map(sorted, counts)) == [["deferred_latest"], ["deferred_probe"]]


async def test_a_writer_that_does_not_defer_reads_the_rows_deferred_before_it(db: Database) -> None:
    release = asyncio.Event()
    seen: list[dict[str, int]] = []

    async def deferring() -> None:
        async with db.write(defer=True) as conn:
            await release.wait()
            await db.insert(conn, INSERT_PROBE, [("deferred", 1)])

    async def reading() -> None:
        async with db.write() as conn:
            seen.append({r[0]: r[1] for r in await conn.execute(select(probe))})
            # Not deferring: this insert runs at once.
            await db.insert(conn, INSERT_PROBE, [("direct", 2)])
            seen.append({r[0]: r[1] for r in await conn.execute(select(probe))})

    first = asyncio.create_task(deferring())
    await asyncio.sleep(0.05)
    second = asyncio.create_task(reading())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(first, second)
    assert seen == [{"deferred": 1}, {"deferred": 1, "direct": 2}]
    assert await _rows(db, probe) == {"deferred": 1, "direct": 2}


def test_merged_upsert_rows_keep_the_last_row_per_key_in_key_order() -> None:
    rows = [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)]
    assert UPSERT_LATEST.merge(rows) == [("a", 5), ("b", 3), ("c", 4)]
    # Plain inserts are left as they are.
    assert INSERT_PROBE.merge(rows) is rows


async def _mixed(db: Database) -> dict[str, tuple[int, bool, str | None]]:
    async with db.read() as conn:
        return {r.key: (r.n, r.flag, r.note) for r in await conn.execute(select(mixed))}


async def test_bulk_insert_keeps_values_and_counts_what_it_skipped(db: Database) -> None:
    async with db.write() as conn:
        await INSERT_MIXED.run(conn, [(None, "a", True, 1), ("x", "b", False, 2**40)])
        # Two of three keys exist: one row inserted, and so counted.
        assert (
            await ADD_MIXED.run(conn, [("y", "a", False, 9), ("new", "c", True, 3), (None, "b", True, 9)])
            == 1
        )
        assert await ADD_MIXED.run(conn, [("one", "d", False, 4)]) == 1
        assert await ADD_MIXED.run(conn, []) == 0
        # An upsert replaces the other columns of rows whose key exists.
        await UPSERT_MIXED.run(conn, [("changed", "a", False, 5), (None, "e", True, 6)])
        # One key twice in one call: the last row wins, as row by row.
        await UPSERT_MIXED.run(conn, [("twice", "f", True, 7), ("last", "f", False, 8)])
    assert await _mixed(db) == {
        "a": (5, False, "changed"),
        "b": (2**40, False, "x"),
        "c": (3, True, "new"),
        "d": (4, False, "one"),
        "e": (6, True, None),
        "f": (8, False, "last"),
    }


async def test_inserts_run_together_share_a_statement_per_table_set(db: Database) -> None:
    async with db.write() as conn:
        await INSERT_MIXED.run(conn, [("old", "k", False, 1)])
    statements, listener = _count_inserts(db)
    try:
        async with db.write() as conn:
            await run_together(
                conn,
                [
                    (INSERT_PROBE, [("p1", 1), ("p2", 2)]),
                    # "m" twice: the last row wins.
                    (UPSERT_MIXED, [("first", "k", True, 2), (None, "m", False, 3), ("m2", "m", True, 5)]),
                    (UPSERT_LATEST, []),
                    # The same table again: after the first upsert, in a statement of its own.
                    (UPSERT_MIXED, [("second", "k", False, 4)]),
                ],
            )
    finally:
        sa_event.remove(db.engine.sync_engine, "before_cursor_execute", listener)
    assert await _rows(db, probe) == {"p1": 1, "p2": 2}
    assert await _mixed(db) == {"k": (4, False, "second"), "m": (5, True, "m2")}
    if db.engine.dialect.name == "postgresql":
        assert statements == [["deferred_probe", "deferred_mixed"], ["deferred_mixed"]]
    else:
        assert statements == [["deferred_probe"], ["deferred_mixed"], ["deferred_mixed"]]
