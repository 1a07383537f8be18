"""Push actions keyed by (user, room, event position): one index fewer per row written.

Revision ID: 0006_push_actions_key
Revises: 0005_stream_positions

Every notifying member of a room gets one `event_push_actions` row per message, so the
table's B-trees are written N times per message. No query looks a row up by
`event_id`: unread counts read (user_id, room_id, event_stream), /sync reads
(user_id, stream_id), /notifications reads user_id. `event_stream` is the event's
`events.stream_id` (that table's primary key), so (user_id, room_id, event_stream) is
unique exactly when (user_id, event_id) was; it becomes the primary key and replaces
the `event_push_actions_user_room` index, and inserts append at the end of each user's
range instead of landing at a random event ID.

On SQLite the table is copied (rows kept); PostgreSQL changes the key in place.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006_push_actions_key"
down_revision = "0005_stream_positions"
branch_labels = None
depends_on = None

TABLE = "event_push_actions"
# PostgreSQL's default name for the key created by 0004 (and the one used here).
PKEY = "event_push_actions_pkey"
NEW_KEY = ["user_id", "room_id", "event_stream"]
OLD_KEY = ["user_id", "event_id"]
USER_ROOM = "event_push_actions_user_room"
USER_ROOM_COLUMNS = ["user_id", "room_id", "event_stream"]
USER_STREAM = "event_push_actions_user_stream"
USER_STREAM_COLUMNS = ["user_id", "stream_id"]


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("thread_id", sa.String(length=255), nullable=False),
        sa.Column("event_stream", sa.BigInteger(), nullable=False),
        sa.Column("stream_id", sa.BigInteger(), nullable=False),
        sa.Column("highlight", sa.Boolean(), nullable=False),
        sa.Column("actions_json", sa.Text(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
    ]


def _sqlite_copy(key: list[str], indexes: dict[str, list[str]]) -> None:
    """SQLite cannot change a primary key in place: build the new table, copy the rows,
    drop the old one (its indexes go with it), rename, and index the new table."""
    new = f"{TABLE}_new"
    columns = _columns()
    op.create_table(new, *columns, sa.PrimaryKeyConstraint(*key))
    names = ", ".join(c.name for c in columns)
    op.execute(f"INSERT INTO {new} ({names}) SELECT {names} FROM {TABLE}")
    op.drop_table(TABLE)
    op.rename_table(new, TABLE)
    for name, cols in indexes.items():
        op.create_index(name, TABLE, cols, unique=False)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_copy(NEW_KEY, {USER_STREAM: USER_STREAM_COLUMNS})
        return
    op.drop_constraint(PKEY, TABLE, type_="primary")
    op.create_primary_key(PKEY, TABLE, NEW_KEY)
    op.drop_index(USER_ROOM, table_name=TABLE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_copy(OLD_KEY, {USER_ROOM: USER_ROOM_COLUMNS, USER_STREAM: USER_STREAM_COLUMNS})
        return
    op.create_index(USER_ROOM, TABLE, USER_ROOM_COLUMNS, unique=False)
    op.drop_constraint(PKEY, TABLE, type_="primary")
    op.create_primary_key(PKEY, TABLE, OLD_KEY)
