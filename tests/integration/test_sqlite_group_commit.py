"""SQLite group commit: writers ready at the same moment share one transaction, and one
writer's failure undoes only its own work (homeserver.storage.engine, "Group commit")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import event as sa_event
from sqlalchemy import text

from homeserver.storage.engine import Database


async def _database(path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{path}")
    # The first connection goes through the async engine (as `migrate` does at start-up).
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE rows (name TEXT PRIMARY KEY, position INTEGER NOT NULL)"))
    return db


async def test_ready_writers_share_a_commit_and_a_failure_stays_its_own(tmp_path: Path) -> None:
    db = await _database(tmp_path / "g.db")
    commits = 0

    def on_commit(*_: object) -> None:
        nonlocal commits
        commits += 1

    sa_event.listen(db.engine.sync_engine, "commit", on_commit)

    async def writer(name: str) -> int:
        async with db.write(gather=True) as conn:
            position = await db.next_stream_id()
            await conn.execute(text("INSERT INTO rows VALUES (:n, :p)"), {"n": name, "p": position})
            if name == "bad":
                raise ValueError("this writer fails after its insert")
        # write() returns once the shared transaction has committed: readers see the row.
        assert db.current_stream_id >= position
        return position

    try:
        names = ["a", "b", "bad", "c", "d"]
        results = await asyncio.gather(*(writer(n) for n in names), return_exceptions=True)
        async with db.read() as conn:
            stored: dict[str, int] = dict((await conn.execute(text("SELECT name, position FROM rows"))).all())
    finally:
        sa_event.remove(db.engine.sync_engine, "commit", on_commit)
        await db.close()
    assert isinstance(results[2], ValueError)
    assert stored == {n: p for n, p in zip(names, results, strict=True) if n != "bad"}
    assert commits == 1


async def test_a_failing_first_writer_fails_only_itself(tmp_path: Path) -> None:
    db = await _database(tmp_path / "f.db")

    async def writer(name: str) -> None:
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO rows VALUES (:n, 0)"), {"n": name})
            if name == "first":
                raise ValueError("the transaction's first writer fails")

    try:
        results = await asyncio.gather(writer("first"), writer("second"), return_exceptions=True)
        async with db.read() as conn:
            names = (await conn.execute(text("SELECT name FROM rows"))).scalars().all()
    finally:
        await db.close()
    # The first writer's failure ends its transaction before anyone joined it.
    assert isinstance(results[0], ValueError) and results[1] is None
    assert names == ["second"]
