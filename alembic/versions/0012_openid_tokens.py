"""OpenID tokens: short-lived proof of a user's identity for third parties.

Revision ID: 0012_openid_tokens
Revises: 0011_push_late

POST /user/{userId}/openid/request_token issues one; a third party (an integration manager,
a widget's backend) checks it at this server's federation listener,
GET /_matrix/federation/v1/openid/userinfo. Stored hashed and in the database, so any
worker can answer the check.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_openid_tokens"
down_revision = "0011_push_late"
branch_labels = None
depends_on = None

TABLE = "openid_tokens"
EXPIRES = "openid_tokens_expires"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(EXPIRES, TABLE, ["expires_ms"], unique=False)


def downgrade() -> None:
    op.drop_index(EXPIRES, table_name=TABLE)
    op.drop_table(TABLE)
