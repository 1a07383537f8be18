"""Login tokens: `m.login.token` sign-in from a device already signed in.

Revision ID: 0015_login_tokens
Revises: 0014_refresh_tokens

POST /_matrix/client/v1/login/get_token (behind the account password) issues a token that
POST /login accepts once, within two minutes, as `{"type": "m.login.token"}`. Stored
hashed and in the database, so any worker can accept it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_login_tokens"
down_revision = "0014_refresh_tokens"
branch_labels = None
depends_on = None

TABLE = "login_tokens"
EXPIRES = "login_tokens_expires"


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
