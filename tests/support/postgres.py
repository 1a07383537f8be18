"""Fresh PostgreSQL databases for tests (SOTTO_TEST_DATABASE=postgres).

Each test gets its own database, copied from a template that already holds the
migrated schema (one template per set of migrations, so creating a database costs
a file copy, not a migration run). The server is local, trust-authenticated,
at SOTTO_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

ADMIN_DSN = os.environ.get("SOTTO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ALEMBIC_VERSIONS = Path(__file__).resolve().parents[2] / "alembic" / "versions"
_template_lock = asyncio.Lock()


def use_postgres() -> bool:
    return os.environ.get("SOTTO_TEST_DATABASE", "sqlite").lower() in ("postgres", "postgresql")


def _dsn_for(database: str, admin_dsn: str = ADMIN_DSN) -> str:
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{database}"


def sqlalchemy_url(database: str, admin_dsn: str = ADMIN_DSN) -> str:
    return _dsn_for(database, admin_dsn).replace("postgresql://", "postgresql+asyncpg://", 1)


async def available(admin_dsn: str = ADMIN_DSN) -> bool:
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def _schema_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(ALEMBIC_VERSIONS.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


async def _ensure_template(admin: asyncpg.Connection, admin_dsn: str) -> str:
    from homeserver.storage.engine import Database
    from homeserver.storage.migrate import migrate

    name = f"sotto_tpl_{_schema_digest()}"
    async with _template_lock:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return name
        building = f"{name}_{uuid.uuid4().hex[:6]}"
        await admin.execute(f'CREATE DATABASE "{building}"')
        db = Database(sqlalchemy_url(building, admin_dsn))
        try:
            await migrate(db)
        finally:
            await db.close()
        try:
            await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        except asyncpg.DuplicateDatabaseError:
            # Another test run built it meanwhile.
            await admin.execute(f'DROP DATABASE "{building}"')
        return name


@asynccontextmanager
async def fresh_database(admin_dsn: str = ADMIN_DSN) -> AsyncIterator[str]:
    """Create an empty, migrated database; yield its SQLAlchemy URL; drop it afterwards."""
    admin = await asyncpg.connect(admin_dsn, timeout=10)
    name = f"sotto_t_{uuid.uuid4().hex[:12]}"
    try:
        template = await _ensure_template(admin, admin_dsn)
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        yield sqlalchemy_url(name, admin_dsn)
    finally:
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def table_text(url: str) -> bytes:
    """Every row of every table in the database at `url`, as text: what is at rest there."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS t FROM pg_tables WHERE schemaname = 'public'"
        )
        parts: list[str] = []
        for row in tables:
            parts.extend(r[0] for r in await conn.fetch(f"SELECT t::text FROM {row['t']} AS t"))
    finally:
        await conn.close()
    return "\n".join(parts).encode()
