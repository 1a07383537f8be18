"""The SQLite write-ahead log starts over (so stays bounded) under a steady stream of commits.

A checkpoint that ran beside the writers never caught up with them, so SQLite never
started the WAL over and it grew by everything written (see Database._checkpoint_forever).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from homeserver.storage import engine as engine_mod
from homeserver.storage.engine import Database

ROW_BYTES = 4096


def _wal_restarts(wal: Path) -> int:
    """The WAL header's checkpoint sequence number: SQLite adds one each time it starts the
    log over from its beginning (https://www.sqlite.org/fileformat.html#wal_file_format)."""
    with wal.open("rb") as f:
        header = f.read(16)
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else 0


async def test_wal_is_reused_under_continuous_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "CHECKPOINT_INTERVAL_S", 0.05)
    path = tmp_path / "wal.db"
    wal = path.with_name(path.name + "-wal")
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        # The first connection goes through the async engine (as `migrate` does at start-up).
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)"))
        start = _wal_restarts(wal)
        written = 0
        loop = asyncio.get_running_loop()
        # Writes never pause for long: until the WAL has started over five times, or 10 s.
        # (How large it grows between restarts follows the disk: a checkpoint pass that
        # stalls 150 ms on fsync lets the writers add ~10 MB meanwhile.)
        end = loop.time() + 10
        while loop.time() < end and _wal_restarts(wal) - start < 5:
            async with db.write() as conn:
                await conn.execute(
                    text("INSERT INTO blobs (body) VALUES (:b)"), {"b": os.urandom(ROW_BYTES)}
                )
            written += ROW_BYTES
            # Let the checkpointer's thread finish and take its turn (as request handling does).
            await asyncio.sleep(0)
        restarts, size = _wal_restarts(wal) - start, wal.stat().st_size
        async with db.read() as conn:
            rows = await conn.scalar(text("SELECT count(*) FROM blobs"))
    finally:
        await db.close()
    assert rows == written // ROW_BYTES
    # Without checkpoints that take the write lock, none ever caught up with the writers and
    # the WAL never started over: it held every row written (and more).
    assert restarts >= 5, (restarts, written, size)


async def test_sparse_writes_are_checkpointed_without_pausing_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no write running beside it, one checkpoint pass copies everything: the second
    pass, which holds the write lock, is skipped."""
    monkeypatch.setattr(engine_mod, "CHECKPOINT_INTERVAL_S", 0.05)
    path = tmp_path / "sparse.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    passes: list[bool] = []  # whether each pass ran with the write lock held
    connections: list[sqlite3.Connection] = []  # kept alive: distinct objects, distinct ids
    real = engine_mod._checkpoint

    def recording(conn: sqlite3.Connection) -> bool:
        passes.append(db._write_lock.locked())
        connections.append(conn)
        return real(conn)

    monkeypatch.setattr(engine_mod, "_checkpoint", recording)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)"))
        for _ in range(4):
            async with db.write() as conn:
                await conn.execute(text("INSERT INTO blobs (body) VALUES (:b)"), {"b": os.urandom(ROW_BYTES)})
            await asyncio.sleep(0.2)  # several checkpoint intervals with nothing written
        async with db.read() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM blobs")) == 4
    finally:
        await db.close()
    assert len(passes) >= 4  # one per write
    assert not any(passes)
    # Every pass ran on the one connection kept for them (opening one parses the schema).
    assert len({id(c) for c in connections}) == 1
