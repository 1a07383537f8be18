"""Device authorisation grants remember their last poll and their interval, so a client
polling faster than told gets `slow_down` (RFC 8628 section 3.5) on whichever worker it
reaches.

Revision ID: 0028_device_grant_polls
Revises: 0027_rendezvous
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028_device_grant_polls"
down_revision = "0027_rendezvous"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oauth_device_grants", sa.Column("last_poll_ts", sa.BigInteger(), nullable=True))
    op.add_column(
        "oauth_device_grants",
        sa.Column("interval_s", sa.Integer(), nullable=False, server_default="5"),
    )


def downgrade() -> None:
    op.drop_column("oauth_device_grants", "interval_s")
    op.drop_column("oauth_device_grants", "last_poll_ts")
