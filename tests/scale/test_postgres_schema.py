"""Migrations have the same effect on SQLite and PostgreSQL: each ends exactly at the table definitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

import homeserver.storage.all_schemas  # noqa: F401  (registers every table)
from homeserver.storage import postgres
from homeserver.storage.engine import Database
from homeserver.storage.migrate import alembic_config, migrate
from homeserver.storage.schema import metadata


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def _migrated_diff(url: str) -> list[Any]:
    db = Database(url)
    try:
        await migrate(db)
        # A second run is a no-op (workers all migrate at start).
        await migrate(db)
        async with db.engine.connect() as conn:
            return await conn.run_sync(_diff)
    finally:
        await db.close()


async def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    assert await _migrated_diff(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}") == []


async def test_postgres_schema_matches_the_models(pg_url: str) -> None:
    # pg_url is already migrated (from the template); migrating again must change nothing.
    assert await _migrated_diff(pg_url) == []
    db = Database(pg_url)
    try:
        async with db.read() as conn:
            increment = await conn.scalar(
                text("SELECT increment_by FROM pg_sequences WHERE sequencename = 'stream_seq'")
            )
            # Nothing written yet: the first chunk starts above 0 and nothing is open.
            visible = await postgres.visible_stream(conn)
        assert increment == postgres.STREAM_CHUNK
        assert visible == postgres.STREAM_CHUNK
    finally:
        await db.close()


_PUSH_ROWS = [
    {
        "user_id": f"@u{u}:test",
        "event_id": f"$e{e}",
        "room_id": f"!r{e % 2}:test",
        "thread_id": "main",
        "event_stream": 10 + e,
        "stream_id": 20 + e,
        "highlight": e == 0,
        "actions_json": '["notify"]',
        "ts": 1000 + e,
    }
    for u in range(3)
    for e in range(4)
]
_PUSH_COLUMNS = ", ".join(_PUSH_ROWS[0])


def _push_rows(conn: Connection) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in conn.execute(text(f"SELECT {_PUSH_COLUMNS} FROM event_push_actions")))


def _push_key(conn: Connection) -> list[str]:
    return list(inspect(conn).get_pk_constraint("event_push_actions")["constrained_columns"])


def _rekey_push_actions(conn: Connection) -> tuple[list[Any], list[tuple[Any, ...]], list[Any]]:
    """0006 and 0007 down (to the event_id key), rows written there, up again: the rows
    survive both ways, and 0007 indexes them."""
    command.downgrade(alembic_config(conn), "0005_stream_positions")
    assert _push_key(conn) == ["user_id", "event_id"]
    values = ", ".join(f":{c}" for c in _PUSH_ROWS[0])
    conn.execute(text(f"INSERT INTO event_push_actions ({_PUSH_COLUMNS}) VALUES ({values})"), _PUSH_ROWS)
    before = _push_rows(conn)
    command.upgrade(alembic_config(conn), "head")
    key = _push_key(conn)
    assert _push_rows(conn) == before
    # 0007 records, per (user, room), the newest position of the rows already there.
    newest: dict[tuple[str, str], int] = {}
    for r in _PUSH_ROWS:
        k = (str(r["user_id"]), str(r["room_id"]))
        newest[k] = max(newest.get(k, 0), int(r["stream_id"]))  # type: ignore[call-overload]
    changes = conn.execute(text("SELECT user_id, room_id, stream_id FROM event_push_changes"))
    assert {(u, r): s for u, r, s in changes} == newest
    diff = _diff(conn)
    command.downgrade(alembic_config(conn), "0005_stream_positions")
    assert _push_rows(conn) == before
    command.upgrade(alembic_config(conn), "head")
    return key, before, diff


async def _check_push_actions_rekey(url: str) -> None:
    db = Database(url)
    try:
        await migrate(db)
        async with db.engine.begin() as conn:
            key, rows, diff = await conn.run_sync(_rekey_push_actions)
        assert key == ["user_id", "room_id", "event_stream"]
        assert len(rows) == len(_PUSH_ROWS)
        assert diff == []
    finally:
        await db.close()


async def test_sqlite_push_actions_rekey_keeps_rows(tmp_path: Path) -> None:
    await _check_push_actions_rekey(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")


async def test_postgres_push_actions_rekey_keeps_rows(pg_url: str) -> None:
    await _check_push_actions_rekey(pg_url)
