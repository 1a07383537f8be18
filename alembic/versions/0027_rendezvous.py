"""Rendezvous sessions (MSC4108): the channel two devices use to sign one in by QR code.

Revision ID: 0027_rendezvous
Revises: 0026_oauth
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_rendezvous"
down_revision = "0026_oauth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rendezvous_sessions",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("modified_ts", sa.BigInteger(), nullable=False),
        sa.Column("expires_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index("rendezvous_sessions_expiry", "rendezvous_sessions", ["expires_ts"])


def downgrade() -> None:
    op.drop_index("rendezvous_sessions_expiry", table_name="rendezvous_sessions")
    op.drop_table("rendezvous_sessions")
