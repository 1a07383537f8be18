"""Per-user rate limits a server admin set (Synapse's override_ratelimit admin API).

Revision ID: 0023_ratelimit_overrides
Revises: 0022_blocked_rooms

0 and 0: the user is not rate limited at all.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023_ratelimit_overrides"
down_revision = "0022_blocked_rooms"
branch_labels = None
depends_on = None

TABLE = "ratelimit_overrides"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("messages_per_second", sa.BigInteger(), nullable=False),
        sa.Column("burst_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
