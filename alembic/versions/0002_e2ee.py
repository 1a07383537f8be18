"""End-to-end encryption: device, one-time, fallback and cross-signing keys, signatures,
device list changes, to-device inbox, key backup.

Revision ID: 0002_e2ee
Revises: 0001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_e2ee"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "e2e_device_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id"),
    )
    op.create_table(
        "e2e_one_time_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("algorithm", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=255), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", "algorithm", "key_id"),
    )
    op.create_index(
        "e2e_one_time_keys_claim",
        "e2e_one_time_keys",
        ["user_id", "device_id", "algorithm", "ts"],
        unique=False,
    )
    op.create_table(
        "e2e_fallback_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("algorithm", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=255), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", "algorithm"),
    )
    op.create_table(
        "e2e_cross_signing_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("key_type", sa.String(length=32), nullable=False),
        sa.Column("public_key", sa.String(length=255), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key_type"),
    )
    op.create_table(
        "e2e_signatures",
        sa.Column("target_user_id", sa.String(length=255), nullable=False),
        sa.Column("target_key_id", sa.String(length=255), nullable=False),
        sa.Column("signer_user_id", sa.String(length=255), nullable=False),
        sa.Column("signer_key_id", sa.String(length=255), nullable=False),
        sa.Column("signature", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("target_user_id", "target_key_id", "signer_user_id", "signer_key_id"),
    )
    op.create_table(
        "device_list_changes",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_index("device_list_changes_stream", "device_list_changes", ["stream_id"], unique=False)
    op.create_table(
        "device_inbox",
        sa.Column("stream_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("message_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("stream_id"),
    )
    op.create_index(
        "device_inbox_device_stream", "device_inbox", ["user_id", "device_id", "stream_id"], unique=False
    )
    op.create_table(
        "device_inbox_txns",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("txn_id", sa.String(length=255), nullable=False),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", "txn_id"),
    )
    op.create_index("device_inbox_txns_created", "device_inbox_txns", ["created_ts"], unique=False)
    op.create_table(
        "e2e_stream_marks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "e2e_room_keys_versions",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(length=255), nullable=False),
        sa.Column("auth_data", sa.Text(), nullable=False),
        sa.Column("etag", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "version"),
    )
    op.create_table(
        "e2e_room_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("first_message_index", sa.BigInteger(), nullable=False),
        sa.Column("forwarded_count", sa.BigInteger(), nullable=False),
        sa.Column("is_verified", sa.Boolean(), nullable=False),
        sa.Column("session_data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "version", "room_id", "session_id"),
    )


def downgrade() -> None:
    op.drop_table("e2e_room_keys")
    op.drop_table("e2e_room_keys_versions")
    op.drop_table("e2e_stream_marks")
    op.drop_index("device_inbox_txns_created", table_name="device_inbox_txns")
    op.drop_table("device_inbox_txns")
    op.drop_index("device_inbox_device_stream", table_name="device_inbox")
    op.drop_table("device_inbox")
    op.drop_index("device_list_changes_stream", table_name="device_list_changes")
    op.drop_table("device_list_changes")
    op.drop_table("e2e_signatures")
    op.drop_table("e2e_cross_signing_keys")
    op.drop_table("e2e_fallback_keys")
    op.drop_index("e2e_one_time_keys_claim", table_name="e2e_one_time_keys")
    op.drop_table("e2e_one_time_keys")
    op.drop_table("e2e_device_keys")
