"""Email addresses on accounts, and the validation sessions that prove them.

Revision ID: 0032_user_threepids
Revises: 0031_destination_rooms

`user_threepids`: one row per (medium, address), the account it belongs to (as Synapse's
`user_threepids`). `threepid_validation_sessions`: the sessions `…/requestToken` starts,
keyed by session ID and unique per (client_secret, medium, address).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032_user_threepids"
down_revision = "0031_destination_rooms"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_threepids",
        sa.Column("medium", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("validated_at", sa.BigInteger(), nullable=False),
        sa.Column("added_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("medium", "address"),
    )
    op.create_index("user_threepids_user", "user_threepids", ["user_id"])
    op.create_table(
        "threepid_validation_sessions",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("client_secret", sa.String(length=255), nullable=False),
        sa.Column("medium", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("send_attempt", sa.BigInteger(), nullable=False),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.Column("validated_ts", sa.BigInteger(), nullable=True),
        sa.Column("expires_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index(
        "threepid_validation_sessions_secret",
        "threepid_validation_sessions",
        ["client_secret", "medium", "address"],
        unique=True,
    )
    op.create_index("threepid_validation_sessions_expiry", "threepid_validation_sessions", ["expires_ts"])


def downgrade() -> None:
    op.drop_index("threepid_validation_sessions_expiry", table_name="threepid_validation_sessions")
    op.drop_index("threepid_validation_sessions_secret", table_name="threepid_validation_sessions")
    op.drop_table("threepid_validation_sessions")
    op.drop_index("user_threepids_user", table_name="user_threepids")
    op.drop_table("user_threepids")
