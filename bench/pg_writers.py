"""Write transactions per second on PostgreSQL from one and from several processes.

    python -m bench.pg_writers                      # 1 and 2 processes, 10 s each
    python -m bench.pg_writers --processes 1,2,4 --writers 4 --seconds 5

Each process is what a worker's storage layer is: one `Database` on a fresh migrated
database, with `--writers` tasks each committing small write transactions (one stream
position, one row) back to back. Nothing else runs, so the figure isolates how write
transactions of different processes overlap: with one stream lock for everybody they
queue behind each other's COMMIT (an fsync each), with per-transaction markers they
commit side by side. Prints transactions/s per process count.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
import uuid
from typing import Any

from sqlalchemy import text

from bench.targets import PG_ADMIN, _create_pg_database, _drop_pg_database


async def _writer_process(url: str, seconds: float, writers: int) -> int:
    from homeserver.storage.engine import Database

    db = Database(url)
    await db.load_stream_position()
    done = 0
    end = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < end:
            async with db.write() as conn:
                position = await db.next_stream_id()
                await conn.execute(text("INSERT INTO pg_writers_probe VALUES (:p)"), {"p": position})
            done += 1

    try:
        await asyncio.gather(*(loop() for _ in range(writers)))
    finally:
        await db.close()
    return done


def _run_process(url: str, seconds: float, writers: int, start_at: float, out: Any) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    out.put(asyncio.run(_writer_process(url, seconds, writers)))


async def _prepare(url: str) -> None:
    from homeserver.storage.engine import Database
    from homeserver.storage.migrate import migrate

    db = Database(url)
    try:
        await migrate(db)
        async with db.write() as conn:
            await conn.execute(text("CREATE TABLE pg_writers_probe (position bigint PRIMARY KEY)"))
    finally:
        await db.close()


def measure(processes: int, writers: int, seconds: float) -> float:
    name = f"bench_writers_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_pg_database(name))
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    try:
        asyncio.run(_prepare(url))
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        start_at = time.time() + 2.0  # every process connected before any starts
        procs = [
            ctx.Process(target=_run_process, args=(url, seconds, writers, start_at, out))
            for _ in range(processes)
        ]
        for p in procs:
            p.start()
        total = sum(int(out.get(timeout=seconds + 60)) for _ in procs)
        for p in procs:
            p.join(30)
        return total / seconds
    finally:
        asyncio.run(_drop_pg_database(name))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_writers", description=__doc__)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--writers", type=int, default=1, help="concurrent writers per process")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    for n in (int(x) for x in args.processes.split(",")):
        rate = measure(n, args.writers, args.seconds)
        print(f"{n} process(es) x {args.writers} writer(s): {rate:,.0f} write transactions/s", flush=True)


if __name__ == "__main__":
    main()
