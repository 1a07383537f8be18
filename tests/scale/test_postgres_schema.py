"""Migrations have the same effect on SQLite and PostgreSQL: each ends exactly at the table definitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

import homeserver.storage.all_schemas  # noqa: F401  (registers every table)
from homeserver.storage import postgres
from homeserver.storage.engine import Database
from homeserver.storage.migrate import migrate
from homeserver.storage.schema import metadata


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def _migrated_diff(url: str) -> tuple[list[Any], int]:
    db = Database(url)
    try:
        await migrate(db)
        # A second run is a no-op (workers all migrate at start).
        await migrate(db)
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(_diff)
            position = await postgres.read_stream(conn)
        return diff, position
    finally:
        await db.close()


async def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    diff, position = await _migrated_diff(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    assert diff == []
    assert position == 0


async def test_postgres_schema_matches_the_models(pg_url: str) -> None:
    # pg_url is already migrated (from the template); migrating again must change nothing.
    diff, position = await _migrated_diff(pg_url)
    assert diff == []
    assert position == 0
