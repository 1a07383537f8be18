"""Shadow-banned accounts (Synapse's admin API): their sends, invites and typing answer
success but reach no one.

Revision ID: 0025_shadow_ban
Revises: 0024_delayed_events
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025_shadow_ban"
down_revision = "0024_delayed_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("shadow_banned", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    op.drop_column("users", "shadow_banned")
