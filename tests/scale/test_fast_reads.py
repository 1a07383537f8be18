"""Hot reads on PostgreSQL's driver connection (homeserver.storage.fast_reads).

The same rows as through SQLAlchemy; a broken or cancelled read drops its connection
(the pool must not hand it out again) and fails as SQLAlchemy would; a statement inside a
transaction still sees that transaction; statement listeners still see every statement.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, event, func, insert, literal, literal_column, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from homeserver.storage.engine import Database
from homeserver.storage.fast_reads import FastQuery, in_array
from homeserver.storage.schema import rooms
from tests.support.database import migrated_sqlite

_ROOMS = FastQuery(
    select(rooms.c.room_id, rooms.c.state_version)
    .where(rooms.c.room_id.in_(bindparam("ids", expanding=True)), rooms.c.is_public.is_(False))
    .order_by(rooms.c.room_id),
    select(rooms.c.room_id, rooms.c.state_version)
    .where(in_array(rooms.c.room_id, "ids"), rooms.c.is_public.is_(False))
    .order_by(rooms.c.room_id),
)
_SLEEP = FastQuery(select(func.pg_sleep(bindparam("seconds")), literal(1)))


async def _add_rooms(db: Database, *ids: str) -> None:
    async with db.write() as conn:
        for i, room_id in enumerate(ids):
            await conn.execute(
                insert(rooms).values(room_id=room_id, room_version="11", is_public=False, created_ts=i)
            )


async def _backend_pid(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_rows_match_sqlalchemys_on_both_databases(pg_url: str, tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "h.db") as sqlite:
        for db in (sqlite, Database(pg_url)):
            try:
                await _add_rooms(db, "!b:x", "!a:x", "!c:x")
                async with db.read() as conn:
                    got = [tuple(r) for r in await _ROOMS.rows(conn, {"ids": ["!a:x", "!b:x", "!z:x"]})]
                assert got == [("!a:x", 0), ("!b:x", 0)], db.engine.dialect.name
            finally:
                if db is not sqlite:
                    await db.close()


async def test_a_broken_connection_is_dropped_and_the_next_read_works(pg_url: str) -> None:
    db = Database(pg_url, pool_size=1)
    try:
        await _add_rooms(db, "!a:x")
        pid = await _backend_pid(db)
        killer = Database(pg_url)
        try:
            async with killer.read() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await killer.close()
        with pytest.raises(DBAPIError) as failed:
            async with db.read() as conn:
                await _ROOMS.rows(conn, {"ids": ["!a:x"]})
        assert failed.value.connection_invalidated
        # The pool's only reader connection was replaced, not handed out again.
        assert await _backend_pid(db) != pid
        async with db.read() as conn:
            assert [tuple(r) for r in await _ROOMS.rows(conn, {"ids": ["!a:x"]})] == [("!a:x", 0)]
    finally:
        await db.close()


async def test_a_cancelled_read_drops_its_connection(pg_url: str) -> None:
    db = Database(pg_url, pool_size=1)
    try:
        pid = await _backend_pid(db)

        async def slow() -> None:
            async with db.read() as conn:
                await _SLEEP.rows(conn, {"seconds": 30})

        task = asyncio.create_task(slow())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            assert await _backend_pid(db) != pid
            async with db.read() as conn:
                assert [tuple(r) for r in await _SLEEP.rows(conn, {"seconds": 0})] == [(None, 1)]
    finally:
        await db.close()


def _listen(db: Database) -> list[tuple[str, Any, Any]]:
    """(statement, parameters, cursor) of every statement: the cursor is None when the
    statement ran on the driver connection, past SQLAlchemy."""
    seen: list[tuple[str, Any, Any]] = []

    def before(_c: Any, cursor: Any, statement: str, params: Any, *_args: Any) -> None:
        seen.append((statement, params, cursor))

    event.listen(db.engine.sync_engine, "before_cursor_execute", before)
    return seen


async def test_statement_listeners_see_it(pg_url: str) -> None:
    db = Database(pg_url)
    seen = _listen(db)
    try:
        async with db.read() as conn:
            await _ROOMS.rows(conn, {"ids": ["!a:x"]})
        [(statement, params, cursor)] = seen
        assert "= ANY" in statement and ["!a:x"] in params and cursor is None
    finally:
        await db.close()


async def test_inside_a_transaction_sqlalchemy_runs_it(pg_url: str) -> None:
    """SQLAlchemy begins a transaction at its first statement: one run on the driver
    connection before that would run outside it."""
    db = Database(pg_url)
    seen = _listen(db)
    try:
        async with db.write() as conn:
            assert [r[0] for r in await _ROOMS.rows(conn, {"ids": ["!t:x"]})] == []
            await conn.execute(
                insert(rooms).values(room_id="!t:x", room_version="11", is_public=False, created_ts=0)
            )
            assert [r[0] for r in await _ROOMS.rows(conn, {"ids": ["!t:x"]})] == ["!t:x"]
        reads = [cursor for statement, _, cursor in seen if "FROM rooms" in statement]
        assert len(reads) == 2 and None not in reads
    finally:
        await db.close()


_ONE_ROOM = FastQuery(
    select(rooms.c.room_id, rooms.c.is_public).where(
        rooms.c.room_id == bindparam("id"), rooms.c.created_ts >= 0
    )
)
_MISSING = FastQuery(select(literal_column("x")).select_from(text("no_such_table")))


async def test_sqlite_runs_it_on_the_driver_connection(tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "h.db") as db:
        await _add_rooms(db, "!a:x", "!b:x")
        seen = _listen(db)
        async with db.read() as conn:
            assert [tuple(r) for r in await _ONE_ROOM.rows(conn, {"id": "!b:x"})] == [("!b:x", 0)]
            # With an expanding parameter, SQLAlchemy runs it (it has a cursor).
            assert [r[0] for r in await _ROOMS.rows(conn, {"ids": ["!a:x"]})] == ["!a:x"]
            with pytest.raises(OperationalError, match="no_such_table"):
                await _MISSING.rows(conn, {})
        assert [cursor is None for _, _, cursor in seen] == [True, False, True]


def test_an_expanding_parameter_cannot_be_compiled_once() -> None:
    query = FastQuery(select(rooms.c.room_id).where(rooms.c.room_id.in_(bindparam("ids", expanding=True))))
    with pytest.raises(ValueError, match="expanding"):
        _ = query.compiled
