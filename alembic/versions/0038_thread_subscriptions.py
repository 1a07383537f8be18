"""Thread subscriptions (MSC4306): a user's subscription state per thread root, positioned
in the server-wide stream (homeserver/storage/thread_subscriptions.py).

Revision ID: 0038_thread_subscriptions
Revises: 0037_consent_notice
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0038_thread_subscriptions"
down_revision = "0037_consent_notice"
branch_labels = None
depends_on = None

TABLE = "thread_subscriptions"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("subscribed", sa.Boolean(), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.Column("unsubscribed_at_stream", sa.BigInteger(), nullable=True),
        sa.Column("unsubscribed_at_depth", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "room_id", "event_id"),
    )
    op.create_index("thread_subscriptions_thread", TABLE, ["room_id", "event_id"])
    op.create_index("thread_subscriptions_user_stream", TABLE, ["user_id", "stream_id"])
    op.create_index("thread_subscriptions_stream", TABLE, ["stream_id"], unique=True)


def downgrade() -> None:
    op.drop_index("thread_subscriptions_stream", table_name=TABLE)
    op.drop_index("thread_subscriptions_user_stream", table_name=TABLE)
    op.drop_index("thread_subscriptions_thread", table_name=TABLE)
    op.drop_table(TABLE)
