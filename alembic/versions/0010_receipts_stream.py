"""An index on receipts by stream position alone.

Revision ID: 0010_receipts_stream
Revises: 0009_stream_sequence

An incremental /sync first asks what landed anywhere in its stream window (events,
receipts, presence, device lists) in one statement shared by every sync of that window
(homeserver.storage.sync_reads.SyncQueries.window_summary). Receipts were indexed only
under their room, so that question scanned the table.
"""

from __future__ import annotations

from alembic import op

revision = "0010_receipts_stream"
down_revision = "0009_stream_sequence"
branch_labels = None
depends_on = None

INDEX = "receipts_stream"


def upgrade() -> None:
    op.create_index(INDEX, "receipts", ["stream_id"], unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="receipts")
