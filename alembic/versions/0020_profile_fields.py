"""Custom profile fields (spec v1.16, MSC4133).

Revision ID: 0020_profile_fields
Revises: 0019_sliding_sync_positions

The display name and avatar stay in `users`; any other profile field (`m.tz`, namespaced
keys) is a row here, its value as JSON.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_profile_fields"
down_revision = "0019_sliding_sync_positions"
branch_labels = None
depends_on = None

TABLE = "profile_fields"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("field", sa.String(length=255), nullable=False),
        sa.Column("value_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "field"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
