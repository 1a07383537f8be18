"""Where the browser goes once an emailed validation link has been opened: the `next_link`
a client gave to `…/requestToken` (checked then), kept with the validation session.

Revision ID: 0035_threepid_next_link
Revises: 0034_user_consent
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0035_threepid_next_link"
down_revision = "0034_user_consent"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("threepid_validation_sessions", sa.Column("next_link", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("threepid_validation_sessions", "next_link")
