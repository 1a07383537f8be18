"""Federation: outbound queue, destinations, received transactions, event state groups, server key JSON.

Revision ID: 0003_federation
Revises: 0002_e2ee
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_federation"
down_revision = "0002_e2ee"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "federation_outbox",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=True),
        sa.Column("edu_json", sa.Text(), nullable=True),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
    )
    op.create_index("federation_outbox_dest", "federation_outbox", ["destination", "id"])
    op.create_table(
        "federation_destinations",
        sa.Column("destination", sa.String(length=255), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("retry_interval_ms", sa.BigInteger(), nullable=False),
        sa.Column("next_retry_ts", sa.BigInteger(), nullable=False),
        sa.Column("last_success_ts", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "federation_received_txns",
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("txn_id", sa.String(length=255), nullable=False),
        sa.Column("response_json", sa.Text(), nullable=False),
        sa.Column("received_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("origin", "txn_id"),
    )
    op.create_index("federation_received_txns_ts", "federation_received_txns", ["received_ts"])
    op.create_table(
        "federation_state_groups",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("prev_group", sa.BigInteger(), nullable=True),
        sa.Column("chain_length", sa.Integer(), nullable=False),
        sa.Column("delta_json", sa.Text(), nullable=False),
    )
    op.create_table(
        "federation_event_state",
        sa.Column("event_id", sa.String(length=255), primary_key=True),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("state_group", sa.BigInteger(), nullable=True),
        sa.Column("rejected_reason", sa.Text(), nullable=True),
        sa.Column("soft_failed", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "federation_server_key_json",
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("key_id", sa.String(length=255), nullable=False),
        sa.Column("from_server", sa.String(length=255), nullable=False),
        sa.Column("valid_until_ts", sa.BigInteger(), nullable=False),
        sa.Column("fetched_ts", sa.BigInteger(), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("server_name", "key_id", "from_server"),
    )


def downgrade() -> None:
    op.drop_table("federation_server_key_json")
    op.drop_table("federation_event_state")
    op.drop_table("federation_state_groups")
    op.drop_index("federation_received_txns_ts", table_name="federation_received_txns")
    op.drop_table("federation_received_txns")
    op.drop_table("federation_destinations")
    op.drop_index("federation_outbox_dest", table_name="federation_outbox")
    op.drop_table("federation_outbox")
