"""A migrated SQLite database for tests of one store, without a server; and reading the
statements a test saw run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from homeserver.storage.engine import Database
from homeserver.storage.migrate import migrate


@asynccontextmanager
async def migrated_sqlite(path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{path}")
    await migrate(db)
    try:
        yield db
    finally:
        await db.close()


def inserted_tables(statement: str) -> list[str]:
    """The tables a SQL statement inserts into, in order: on PostgreSQL one statement may
    insert into several (`WITH w0 AS (INSERT INTO a …) INSERT INTO b …`)."""
    words = statement.replace("(", " ").split()
    return [words[i + 2] for i in range(len(words) - 2) if words[i : i + 2] == ["INSERT", "INTO"]]
