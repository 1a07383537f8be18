"""Where push actions were written after their event's own transaction.

Revision ID: 0011_push_late
Revises: 0010_receipts_stream

/sync keeps the unread counts of rooms with many unread notifications and adds only the
push actions of newer events (homeserver.storage.unread). Actions for events persisted
outside the message batches (state, remote events) are written in a later transaction;
`late_stream_id` is the stream position of the newest such write for the user and room,
so a kept count knows to count afresh. NULL: none since this migration (counts kept by
a running server start after it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_push_late"
down_revision = "0010_receipts_stream"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("event_push_changes", sa.Column("late_stream_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN on both (SQLite has it since 3.35): a batch rebuild would
    # lose the table's WITHOUT ROWID.
    op.drop_column("event_push_changes", "late_stream_id")
