"""Per federation destination and room, the position of the last event delivered (the
admin API's destination rooms and `last_successful_stream_ordering`).

Revision ID: 0031_destination_rooms
Revises: 0030_media_protection
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031_destination_rooms"
down_revision = "0030_media_protection"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federation_destination_rooms",
        sa.Column("destination", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("destination", "room_id"),
    )


def downgrade() -> None:
    op.drop_table("federation_destination_rooms")
