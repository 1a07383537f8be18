"""Federation state that outlives a process: sticky events waiting to be pushed to a server
that newly joined a room (homeserver/storage/sticky_pushes.py), and rooms a worker is
joining, for the PDUs another worker receives meanwhile (homeserver/storage/remote_joins.py).

Revision ID: 0040_federation_pending
Revises: 0039_erased_users
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0040_federation_pending"
down_revision = "0039_erased_users"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sticky_pending_pushes",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("destination", sa.String(length=255), nullable=False),
        sa.Column("join_event_id", sa.String(length=255), nullable=False),
        sa.Column("scheduled_ts", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "destination"),
    )
    op.create_table(
        "federation_joining_rooms",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("joiner", sa.String(length=64), nullable=False),
        sa.Column("until_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "joiner"),
    )


def downgrade() -> None:
    op.drop_table("federation_joining_rooms")
    op.drop_table("sticky_pending_pushes")
