"""Erased users: local accounts deactivated with `erase` (homeserver/storage/erased_users.py).

Revision ID: 0039_erased_users
Revises: 0038_thread_subscriptions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0039_erased_users"
down_revision = "0038_thread_subscriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_users",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )


def downgrade() -> None:
    op.drop_table("erased_users")
