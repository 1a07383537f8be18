"""Refresh tokens, and access tokens that expire.

Revision ID: 0014_refresh_tokens
Revises: 0013_account_moderation

A client that asks for one at login or registration gets an access token that expires
(`access_tokens.expires_ts`) and a refresh token. POST /refresh trades the refresh token
for a new pair; the old refresh token (and the access token issued with it) stays valid
until the new pair is first used, so a client that lost the response can ask again
(`refresh_tokens.next_hash` points at the pair it was traded for, `access_tokens.revokes`
at the refresh token its first use revokes). NULL columns: a token that never expires.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_refresh_tokens"
down_revision = "0013_account_moderation"
branch_labels = None
depends_on = None

ACCESS_COLUMNS = ("expires_ts", "refresh_hash", "revokes")


def upgrade() -> None:
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("created_ts", sa.BigInteger(), nullable=False),
        sa.Column("next_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("refresh_tokens_user_device", "refresh_tokens", ["user_id", "device_id"])
    op.add_column("access_tokens", sa.Column("expires_ts", sa.BigInteger(), nullable=True))
    # The refresh token issued with this access token, and the one its first use revokes.
    op.add_column("access_tokens", sa.Column("refresh_hash", sa.String(length=64), nullable=True))
    op.add_column("access_tokens", sa.Column("revokes", sa.String(length=64), nullable=True))
    op.create_index("access_tokens_refresh", "access_tokens", ["refresh_hash"])


def downgrade() -> None:
    op.drop_index("access_tokens_refresh", table_name="access_tokens")
    for name in ACCESS_COLUMNS:
        op.drop_column("access_tokens", name)
    op.drop_index("refresh_tokens_user_device", table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
