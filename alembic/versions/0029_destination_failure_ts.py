"""Federation destinations remember when they started failing (`failure_ts`, cleared once a
transaction goes through again), for the admin API's destination list.

Revision ID: 0029_destination_failure_ts
Revises: 0028_device_grant_polls
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029_destination_failure_ts"
down_revision = "0028_device_grant_polls"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("federation_destinations", sa.Column("failure_ts", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("federation_destinations", "failure_ts")
