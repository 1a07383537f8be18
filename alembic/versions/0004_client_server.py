"""Client-Server modules: media, push rules/actions/pushers, presence, user directory,
message search, reports.

Revision ID: 0004_client_server
Revises: 0003_federation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_client_server"
down_revision = "0003_federation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media",
        sa.Column("media_id", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("upload_name", sa.Text(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_ts", sa.BigInteger(), nullable=True),
        sa.Column("expires_ts", sa.BigInteger(), nullable=True),
        sa.Column("quarantined", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("media_id"),
    )
    op.create_index("media_user_pending", "media", ["user_id", "uploaded_ts"], unique=False)
    op.create_table(
        "media_thumbnails",
        sa.Column("media_id", sa.String(length=255), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("media_id", "width", "height", "method"),
    )
    op.create_table(
        "push_rules",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.String(length=255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("rule_json", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "kind", "rule_id"),
    )
    op.create_table(
        "push_rules_overrides",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("rule_id", sa.String(length=255), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("actions_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "rule_id"),
    )
    op.create_table(
        "push_rules_stream",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "event_push_actions",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("thread_id", sa.String(length=255), nullable=False),
        sa.Column("event_stream", sa.BigInteger(), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.Column("highlight", sa.Boolean(), nullable=False),
        sa.Column("actions_json", sa.Text(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "event_id"),
    )
    op.create_index(
        "event_push_actions_user_room",
        "event_push_actions",
        ["user_id", "room_id", "event_stream"],
        unique=False,
    )
    op.create_index(
        "event_push_actions_user_stream", "event_push_actions", ["user_id", "stream_id"], unique=False
    )
    op.create_table(
        "pushers",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("app_id", sa.String(length=255), nullable=False),
        sa.Column("pushkey", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("app_display_name", sa.Text(), nullable=False),
        sa.Column("device_display_name", sa.Text(), nullable=False),
        sa.Column("profile_tag", sa.String(length=255), nullable=True),
        sa.Column("lang", sa.String(length=64), nullable=False),
        sa.Column("data_json", sa.Text(), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=True),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "app_id", "pushkey"),
    )
    op.create_index("pushers_app_key", "pushers", ["app_id", "pushkey"], unique=False)
    op.create_table(
        "presence",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status_msg", sa.Text(), nullable=True),
        sa.Column("last_active_ts", sa.BigInteger(), nullable=False),
        sa.Column("currently_active", sa.Boolean(), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_index("presence_stream", "presence", ["stream_id"], unique=False)
    op.create_table(
        "user_directory",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("avatar_url", sa.Text(), nullable=True),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "event_search",
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "key"),
    )
    op.create_index("event_search_room_stream", "event_search", ["room_id", "stream_id"], unique=False)
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reporter", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=True),
        sa.Column("event_id", sa.String(length=255), nullable=True),
        sa.Column("target_user_id", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("reports_ts", "reports", ["ts"], unique=False)


def downgrade() -> None:
    op.drop_index("reports_ts", table_name="reports")
    op.drop_table("reports")
    op.drop_index("event_search_room_stream", table_name="event_search")
    op.drop_table("event_search")
    op.drop_table("user_directory")
    op.drop_index("presence_stream", table_name="presence")
    op.drop_table("presence")
    op.drop_index("pushers_app_key", table_name="pushers")
    op.drop_table("pushers")
    op.drop_index("event_push_actions_user_stream", table_name="event_push_actions")
    op.drop_index("event_push_actions_user_room", table_name="event_push_actions")
    op.drop_table("event_push_actions")
    op.drop_table("push_rules_stream")
    op.drop_table("push_rules_overrides")
    op.drop_table("push_rules")
    op.drop_table("media_thumbnails")
    op.drop_index("media_user_pending", table_name="media")
    op.drop_table("media")
