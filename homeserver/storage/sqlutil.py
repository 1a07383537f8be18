"""Small SQL helpers shared by the stores: IN lists in chunks, and INSERT … ON CONFLICT on
both SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sqlalchemy import Insert, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

# Keep IN (...) lists well below SQLite's bound-parameter limit.
_CHUNK = 500


def chunks(items: Collection[str], size: int = _CHUNK) -> Iterable[list[str]]:
    seq = list(items)
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def dialect_insert(conn: AsyncConnection, table: Table) -> sqlite.Insert | postgresql.Insert:
    """The connection's dialect's INSERT, which has ON CONFLICT (SQLite and PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def upsert(
    conn: AsyncConnection, table: Table, values: dict[str, object], keys: list[str], update: list[str]
) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET update (or DO NOTHING), for SQLite and PostgreSQL."""
    ins = dialect_insert(conn, table).values(**values)
    if not update:
        return ins.on_conflict_do_nothing(index_elements=keys)
    return ins.on_conflict_do_update(index_elements=keys, set_={c: ins.excluded[c] for c in update})
