"""The shared stream position: one row that every writer locks (PostgreSQL workers).

Revision ID: 0005_stream_positions
Revises: 0004_client_server

The row is seeded with the highest `stream_id` already stored in any table, so a
database that was written before this revision continues from where it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_stream_positions"
down_revision = "0004_client_server"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "stream_positions",
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream"),
    )
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    best = 0
    for name in inspector.get_table_names():
        if any(col["name"] == "stream_id" for col in inspector.get_columns(name)):
            value = bind.execute(sa.text(f'SELECT MAX(stream_id) FROM "{name}"')).scalar()
            best = max(best, int(value or 0))
    op.bulk_insert(table, [{"stream": "main", "position": best}])


def downgrade() -> None:
    op.drop_table("stream_positions")
