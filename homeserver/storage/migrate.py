"""Apply alembic migrations programmatically, inside an existing event loop.

Alembic's async template calls asyncio.run(), which fails inside a running
loop; so we hand alembic a connection through `config.attributes`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from homeserver.storage.engine import Database
from homeserver.storage.postgres import lock_key

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def migrate(db: Database) -> None:
    async with db.engine.begin() as conn:
        if db.is_postgres:
            # Workers starting together migrate one at a time; the later ones find nothing to do.
            await conn.execute(select(func.pg_advisory_xact_lock(lock_key("sotto:migrate"))))
        await conn.run_sync(_upgrade)
