"""Delayed events (MSC4140): events a user scheduled, until they are sent or cancelled.

Revision ID: 0024_delayed_events
Revises: 0023_ratelimit_overrides
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_delayed_events"
down_revision = "0023_ratelimit_overrides"
branch_labels = None
depends_on = None

TABLE = "delayed_events"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("delay_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=True),
        sa.Column("txn_id", sa.String(length=255), nullable=True),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("state_key", sa.String(length=255), nullable=True),
        sa.Column("content_json", sa.Text(), nullable=False),
        sa.Column("delay_ms", sa.BigInteger(), nullable=False),
        sa.Column("running_since", sa.BigInteger(), nullable=False),
        sa.Column("send_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("delay_id"),
    )
    op.create_index("delayed_events_user", TABLE, ["user_id"])
    op.create_index("delayed_events_send_ts", TABLE, ["send_ts"])
    op.create_index("delayed_events_target", TABLE, ["room_id", "type", "state_key"])


def downgrade() -> None:
    op.drop_index("delayed_events_target", table_name=TABLE)
    op.drop_index("delayed_events_send_ts", table_name=TABLE)
    op.drop_index("delayed_events_user", table_name=TABLE)
    op.drop_table(TABLE)
