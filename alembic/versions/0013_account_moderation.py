"""Account moderation: locked and suspended accounts.

Revision ID: 0013_account_moderation
Revises: 0012_openid_tokens

A locked account is refused everything but logging out (401 M_USER_LOCKED, soft logout);
a suspended one can read and leave but not join, invite, send or change its profile
(403 M_USER_SUSPENDED). Both are reversible, unlike deactivation, and set by server
admins (`PUT /_matrix/client/v1/admin/{lock,suspend}/{userId}` or `sotto admin`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_account_moderation"
down_revision = "0012_openid_tokens"
branch_labels = None
depends_on = None

COLUMNS = ("locked", "suspended")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("users", sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    for name in COLUMNS:
        op.drop_column("users", name)
