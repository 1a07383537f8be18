"""A migrated SQLite database for tests of one store, without a server."""

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
