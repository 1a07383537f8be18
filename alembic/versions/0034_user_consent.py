"""Terms accepted at registration (the m.login.terms stage): the version of the server's
policies a user accepted, and when (Synapse's consent_version and consent_ts). Null for
accounts that were never asked (terms off, admin or application service registrations).

Revision ID: 0034_user_consent
Revises: 0033_email_notif_state
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034_user_consent"
down_revision = "0033_email_notif_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("consent_version", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("consent_ts", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "consent_ts")
    op.drop_column("users", "consent_version")
