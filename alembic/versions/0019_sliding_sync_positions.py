"""Sliding sync positions shared by workers.

Revision ID: 0019_sliding_sync_positions
Revises: 0018_appservice_room_list

With several workers, each sliding sync response stores what the connection was sent
(homeserver.sync.sliding.connections), so the next request can go to any worker.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_sliding_sync_positions"
down_revision = "0018_appservice_room_list"
branch_labels = None
depends_on = None

TABLE = "sliding_sync_positions"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("conn_id", sa.String(length=255), nullable=False),
        sa.Column("pos", sa.String(length=255), nullable=False),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.Column("data_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", "conn_id", "pos"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
