"""Database engine: connections, the write path and stream positions.

Invariant: all writes go through `Database.write()`, which serialises them
with one lock per process. Stream IDs are allocated inside that lock, so rows
become visible in stream order and a sync at position N never misses a row
below N that commits later. (Several workers on PostgreSQL need a shared
sequence instead; see docs/operations.md.)
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run while one writer commits; NORMAL sync is durable
    # against process crashes (kill -9) in WAL mode at a fraction of FULL's cost.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    def __init__(self, url: str, base_dir: str = ".") -> None:
        sa_url = make_url(url)
        self.is_sqlite = sa_url.get_backend_name() == "sqlite"
        if self.is_sqlite and sa_url.database and sa_url.database != ":memory:":
            path = sa_url.database
            if not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            sa_url = sa_url.set(database=path)
        self.url = sa_url
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(sa_url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._write_lock = asyncio.Lock()
        self._stream_id = 0
        self._persisted = 0

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction on the single write path; commits on normal exit."""
        # Positions handed out in a rolled-back transaction are skipped, never reused.
        async with self._write_lock:
            try:
                async with self.engine.begin() as conn:
                    yield conn
            finally:
                # Everything allocated so far is now committed (or abandoned): readers may see it.
                self._persisted = self._stream_id

    def next_stream_id(self) -> int:
        """Allocate a stream position. Only call inside `write()`."""
        assert self._write_lock.locked(), "stream ids are allocated on the write path"
        self._stream_id += 1
        return self._stream_id

    @property
    def current_stream_id(self) -> int:
        """The highest position whose transaction has finished: safe for readers."""
        return self._persisted

    async def load_stream_position(self) -> None:
        from homeserver.storage.schema import metadata

        best = 0
        async with self.read() as conn:
            for table in metadata.sorted_tables:
                if "stream_id" in table.c:
                    value = (await conn.execute(select(func.max(table.c.stream_id)))).scalar()
                    best = max(best, int(value or 0))
        self._stream_id = best
        self._persisted = best
        log.info("stream position loaded: %d", best)

    async def close(self) -> None:
        await self.engine.dispose()
