"""Stream positions from a sequence, so writers on several workers commit side by side.

Revision ID: 0009_stream_sequence
Revises: 0008_uia_sessions

The single `stream_positions` row (0005) was locked by every write transaction from its
first statement to its COMMIT, so no two writers anywhere ever overlapped, even in
different rooms. On PostgreSQL positions now come from the sequence `stream_seq` in
chunks of 128, and readers learn what is safe to read from the markers (advisory locks)
that open write transactions hold: see homeserver.storage.postgres. SQLite (one process)
keeps its in-memory counter and never used the row. The sequence starts after the row's
position, so a database continues from where it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_stream_sequence"
down_revision = "0008_uia_sessions"
branch_labels = None
depends_on = None

# homeserver.storage.postgres.STREAM_CHUNK (a test checks that they agree).
CHUNK = 128


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        row = sa.text("SELECT position FROM stream_positions WHERE stream = 'main'")
        position = bind.execute(row).scalar()
        op.execute(f"CREATE SEQUENCE stream_seq INCREMENT BY {CHUNK} MINVALUE 1")
        # is_called: the next nextval returns position + CHUNK, and the positions up to the
        # end of this (never handed out) chunk count as written: nothing lies there.
        bind.execute(sa.text("SELECT setval('stream_seq', :p, true)"), {"p": max(int(position or 0), 1)})
    op.drop_table("stream_positions")


def downgrade() -> None:
    table = op.create_table(
        "stream_positions",
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream"),
    )
    bind = op.get_bind()
    best = 0
    if bind.dialect.name == "postgresql":
        best = int(bind.execute(sa.text("SELECT last_value FROM stream_seq")).scalar() or 0) + CHUNK - 1
        op.execute("DROP SEQUENCE stream_seq")
    else:
        inspector = sa.inspect(bind)
        for name in inspector.get_table_names():
            if any(col["name"] == "stream_id" for col in inspector.get_columns(name)):
                value = bind.execute(sa.text(f'SELECT MAX(stream_id) FROM "{name}"')).scalar()
                best = max(best, int(value or 0))
    op.bulk_insert(table, [{"stream": "main", "position": best}])
