"""Rooms a server admin blocked: local users may not join, be invited to or knock on them.

Revision ID: 0022_blocked_rooms
Revises: 0021_user_external_ids

Kept when the room itself is purged (a block may name a room this server never held).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022_blocked_rooms"
down_revision = "0021_user_external_ids"
branch_labels = None
depends_on = None

TABLE = "blocked_rooms"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("room_id"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
