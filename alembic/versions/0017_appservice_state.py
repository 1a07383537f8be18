"""Application services: where each service's transactions stand.

Revision ID: 0017_appservice_state
Revises: 0016_room_state_version

One row per configured application service: the stream position its events were pushed
up to, the last transaction ID it acknowledged, and the transaction in flight (resent
unchanged after a restart, as the spec requires).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_appservice_state"
down_revision = "0016_room_state_version"
branch_labels = None
depends_on = None

TABLE = "appservice_state"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("service_id", sa.String(length=255), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.Column("txn_id", sa.BigInteger(), nullable=False),
        sa.Column("pending_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("service_id"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
