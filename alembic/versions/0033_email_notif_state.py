"""Email notifications (the email pusher): how far each user has been emailed about.

Revision ID: 0033_email_notif_state
Revises: 0032_user_threepids

`email_notif_state`: one row per user with an email pusher: the stream position of the
newest push action already emailed about (or skipped: read, or older than the pusher), and
when the last notification email went out (the throttle). Users who already have an email
pusher start from the newest push action, so an upgrade does not email old notifications.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0033_email_notif_state"
down_revision = "0032_user_threepids"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "email_notif_state",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("last_stream_id", sa.BigInteger(), nullable=False),
        sa.Column("last_sent_ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.execute(
        "INSERT INTO email_notif_state (user_id, last_stream_id, last_sent_ts) "
        "SELECT DISTINCT user_id, "
        "(SELECT COALESCE(MAX(stream_id), 0) FROM event_push_actions), 0 "
        "FROM pushers WHERE kind = 'email'"
    )


def downgrade() -> None:
    op.drop_table("email_notif_state")
