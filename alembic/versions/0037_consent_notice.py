"""Re-consent to changed terms (homeserver/handlers/consent.py): the version of the server's
policies a user was last sent a server notice about (Synapse's consent_server_notice_sent),
so each version's notice goes to each user once, across restarts and workers.

Revision ID: 0037_consent_notice
Revises: 0036_sticky_events
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0037_consent_notice"
down_revision = "0036_sticky_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("consent_server_notice_sent", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "consent_server_notice_sent")
