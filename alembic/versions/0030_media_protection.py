"""Media can be protected from quarantine (`safe_from_quarantine`), and is looked up by its
SHA-256, so that quarantining an item also quarantines its copies and later uploads of it.

Revision ID: 0030_media_protection
Revises: 0029_destination_failure_ts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030_media_protection"
down_revision = "0029_destination_failure_ts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "media", sa.Column("safe_from_quarantine", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index("media_sha256", "media", ["sha256"], unique=False)


def downgrade() -> None:
    op.drop_index("media_sha256", table_name="media")
    op.drop_column("media", "safe_from_quarantine")
