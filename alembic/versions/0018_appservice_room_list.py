"""Application services' room directories: the rooms each published per network.

Revision ID: 0018_appservice_room_list
Revises: 0017_appservice_state

PUT /directory/list/appservice/{networkId}/{roomId} (application services only) adds or
removes a row; publicRooms lists them for `third_party_instance_id` ("<service>|<network>")
or `include_all_networks`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_appservice_room_list"
down_revision = "0017_appservice_state"
branch_labels = None
depends_on = None

TABLE = "appservice_room_list"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("appservice_id", sa.String(length=255), nullable=False),
        sa.Column("network_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("appservice_id", "network_id", "room_id"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
