"""Single sign-on: which identity provider user is which local account.

Revision ID: 0021_user_external_ids
Revises: 0020_profile_fields

One row per (identity provider, the provider's subject), as Synapse's table of the same
name, so that a user signing in again through the provider reaches the same account.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_user_external_ids"
down_revision = "0020_profile_fields"
branch_labels = None
depends_on = None

TABLE = "user_external_ids"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("auth_provider", sa.String(length=255), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("auth_provider", "external_id"),
    )
    op.create_index("user_external_ids_user", TABLE, ["user_id"])


def downgrade() -> None:
    op.drop_index("user_external_ids_user", table_name=TABLE)
    op.drop_table(TABLE)
