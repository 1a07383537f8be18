"""Initial schema: accounts, rooms, events, state, receipts, account data, filters, aliases.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("access_tokens_user_device", "access_tokens", ["user_id", "device_id"], unique=False)
    op.create_table(
        "account_data",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "room_id", "type"),
    )
    op.create_index("account_data_user_stream", "account_data", ["user_id", "stream_id"], unique=False)
    op.create_table(
        "current_state",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("state_key", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("membership", sa.String(length=32), nullable=True),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "type", "state_key"),
    )
    op.create_index(
        "current_state_member", "current_state", ["state_key", "type", "membership"], unique=False
    )
    op.create_table(
        "devices",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("last_seen_ts", sa.BigInteger(), nullable=True),
        sa.Column("last_seen_ip", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "device_id"),
    )
    op.create_table(
        "event_txns",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("txn_id", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", "txn_id"),
    )
    op.create_table(
        "events",
        sa.Column("stream_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("state_key", sa.String(length=255), nullable=True),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("depth", sa.BigInteger(), nullable=False),
        sa.Column("origin_server_ts", sa.BigInteger(), nullable=False),
        sa.Column("json", sa.Text(), nullable=False),
        sa.Column("replaces_state", sa.String(length=255), nullable=True),
        sa.Column("redacted_by", sa.String(length=255), nullable=True),
        sa.Column("rel_type", sa.String(length=64), nullable=True),
        sa.Column("relates_to", sa.String(length=255), nullable=True),
        sa.Column("outlier", sa.Boolean(), nullable=False),
        sa.Column("txn_id", sa.String(length=255), nullable=True),
        sa.Column("device_id", sa.String(length=255), nullable=True),
        sa.Column("unsigned_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("stream_id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("events_relates", "events", ["relates_to", "rel_type"], unique=False)
    op.create_index("events_room_stream", "events", ["room_id", "stream_id"], unique=False)
    op.create_table(
        "filters",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("filter_id", sa.Integer(), nullable=False),
        sa.Column("json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "filter_id"),
    )
    op.create_table(
        "forward_extremities",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "event_id"),
    )
    op.create_table(
        "receipts",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("receipt_type", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("thread_id", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "receipt_type", "user_id", "thread_id"),
    )
    op.create_index("receipts_room_stream", "receipts", ["room_id", "stream_id"], unique=False)
    op.create_table(
        "registration_tokens",
        sa.Column("token", sa.String(length=255), nullable=False),
        sa.Column("uses_allowed", sa.Integer(), nullable=True),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("expiry_ts", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("token"),
    )
    op.create_table(
        "room_aliases",
        sa.Column("alias", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("creator", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("alias"),
    )
    op.create_index("room_aliases_room", "room_aliases", ["room_id"], unique=False)
    op.create_table(
        "room_forgotten",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "room_id"),
    )
    op.create_table(
        "rooms",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("room_version", sa.String(length=32), nullable=False),
        sa.Column("creator", sa.String(length=255), nullable=True),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("room_id"),
    )
    op.create_table(
        "server_keys",
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column("key_id", sa.String(length=255), nullable=False),
        sa.Column("verify_key", sa.LargeBinary(), nullable=False),
        sa.Column("valid_until_ts", sa.BigInteger(), nullable=False),
        sa.Column("expired_ts", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("server_name", "key_id"),
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("is_guest", sa.Boolean(), nullable=False),
        sa.Column("deactivated", sa.Boolean(), nullable=False),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.Column("displayname", sa.Text(), nullable=True),
        sa.Column("avatar_url", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("user_id"),
    )


def downgrade() -> None:
    op.drop_table("users")
    op.drop_table("server_keys")
    op.drop_table("rooms")
    op.drop_table("room_forgotten")
    op.drop_index("room_aliases_room", table_name="room_aliases")
    op.drop_table("room_aliases")
    op.drop_table("registration_tokens")
    op.drop_index("receipts_room_stream", table_name="receipts")
    op.drop_table("receipts")
    op.drop_table("forward_extremities")
    op.drop_table("filters")
    op.drop_index("events_room_stream", table_name="events")
    op.drop_index("events_relates", table_name="events")
    op.drop_table("events")
    op.drop_table("event_txns")
    op.drop_table("devices")
    op.drop_index("current_state_member", table_name="current_state")
    op.drop_table("current_state")
    op.drop_index("account_data_user_stream", table_name="account_data")
    op.drop_table("account_data")
    op.drop_index("access_tokens_user_device", table_name="access_tokens")
    op.drop_table("access_tokens")
