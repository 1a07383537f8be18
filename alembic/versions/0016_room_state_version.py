"""A room's state version: a counter moved by every change to its current state.

Revision ID: 0016_room_state_version
Revises: 0015_login_tokens

With several workers each keeps a cache of the rooms' auth state, checked under the room
lock against the stored forward extremities. Every event moves the extremities, so a
message stored by another worker used to drop the whole cache. Now the cache also keeps
the room's `state_version`: a message leaves it alone, while a change to the current state
(or a redaction) moves it in the same transaction, and only then is the cache dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_room_state_version"
down_revision = "0015_login_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rooms", sa.Column("state_version", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("rooms", "state_version")
