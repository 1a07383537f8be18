"""Sticky events (MSC4354): which events stay sticky until when, at which stream position;
and the sticky duration of a delayed event, for when it is sent.

Revision ID: 0036_sticky_events
Revises: 0035_threepid_next_link
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0036_sticky_events"
down_revision = "0035_threepid_next_link"
branch_labels = None
depends_on = None

TABLE = "sticky_events"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("soft_failed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("sticky_events_room_position", TABLE, ["room_id", "position"])
    op.create_index("sticky_events_position", TABLE, ["position"])
    op.create_index("sticky_events_expires", TABLE, ["expires_at"])
    op.add_column("delayed_events", sa.Column("sticky_duration_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("delayed_events", "sticky_duration_ms")
    op.drop_index("sticky_events_expires", table_name=TABLE)
    op.drop_index("sticky_events_position", table_name=TABLE)
    op.drop_index("sticky_events_room_position", table_name=TABLE)
    op.drop_table(TABLE)
