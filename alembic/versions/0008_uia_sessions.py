"""User-interactive auth sessions in the database, shared by every worker.

Revision ID: 0008_uia_sessions
Revises: 0007_push_changes

They lived in each process's memory, so with several workers a multi-stage flow (a
registration token, then the dummy stage) that reached another worker for its second step
started over there. Sessions in flight when this migration runs were in memory and are
gone anyway: clients start a new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_uia_sessions"
down_revision = "0007_push_changes"
branch_labels = None
depends_on = None

TABLE = "uia_sessions"
LAST_USED = "uia_sessions_last_used"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("last_used_ms", sa.BigInteger(), nullable=False),
        sa.Column("data_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index(LAST_USED, TABLE, ["last_used_ms"], unique=False)


def downgrade() -> None:
    op.drop_index(LAST_USED, table_name=TABLE)
    op.drop_table(TABLE)
