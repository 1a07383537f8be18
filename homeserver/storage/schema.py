"""Table definitions (SQLAlchemy Core) for the homeserver's own data.

Core tables rather than ORM classes: hot paths issue a handful of explicit
statements and never lazy-load. Every hot query has an index declared here;
migrations in alembic/ create exactly these tables on SQLite and PostgreSQL.

Stream positions: every row that `/sync` must notice (events, receipts,
account data, ...) carries a `stream_id` drawn from one server-wide counter,
so a sync token is a single integer position.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("password_hash", Text, nullable=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("is_guest", Boolean, nullable=False, default=False),
    Column("deactivated", Boolean, nullable=False, default=False),
    Column("created_ts", BigInteger, nullable=False),
    Column("displayname", Text, nullable=True),
    Column("avatar_url", Text, nullable=True),
    # Account moderation (reversible, unlike deactivation): see handlers/moderation.py.
    Column("locked", Boolean, nullable=False, default=False, server_default=false()),
    Column("suspended", Boolean, nullable=False, default=False, server_default=false()),
    # Shadow-banned: sends, invites and typing answer success and reach no one (migration 0025).
    Column("shadow_banned", Boolean, nullable=False, default=False, server_default=false()),
    # The version of the server's terms the user accepted at registration, and when (0034).
    Column("consent_version", Text, nullable=True),
    Column("consent_ts", BigInteger, nullable=True),
    # The terms version the user was last sent a server notice about (handlers/consent.py, 0037).
    Column("consent_server_notice_sent", Text, nullable=True),
)

# Local users erased at deactivation (`erase: true`; Synapse's table of the same name,
# migration 0039): their events reach readers who were not in the room then pruned
# (homeserver/storage/erased_users.py, homeserver/handlers/erasure.py). A table of its own,
# not a column of `users`: every worker reads all of it into memory, and it is usually empty.
erased_users = Table(
    "erased_users",
    metadata,
    Column("user_id", String(255), primary_key=True),
)

devices = Table(
    "devices",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("display_name", Text, nullable=True),
    Column("last_seen_ts", BigInteger, nullable=True),
    Column("last_seen_ip", String(64), nullable=True),
    PrimaryKeyConstraint("user_id", "device_id"),
)

# Tokens are stored as SHA-256 digests: a leaked database does not leak sessions.
access_tokens = Table(
    "access_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    # Refreshable tokens only (migration 0014): when it expires, the refresh token issued
    # with it, and the refresh token its first use revokes.
    Column("expires_ts", BigInteger, nullable=True),
    Column("refresh_hash", String(64), nullable=True),
    Column("revokes", String(64), nullable=True),
    Index("access_tokens_user_device", "user_id", "device_id"),
    Index("access_tokens_refresh", "refresh_hash"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    # The refresh token this one was traded for, until that one's pair is first used.
    Column("next_hash", String(64), nullable=True),
    Index("refresh_tokens_user_device", "user_id", "device_id"),
)

registration_tokens = Table(
    "registration_tokens",
    metadata,
    Column("token", String(255), primary_key=True),
    Column("uses_allowed", Integer, nullable=True),
    Column("completed", Integer, nullable=False, default=0),
    Column("expiry_ts", BigInteger, nullable=True),
)

rooms = Table(
    "rooms",
    metadata,
    Column("room_id", String(255), primary_key=True),
    Column("room_version", String(32), nullable=False),
    Column("creator", String(255), nullable=True),
    Column("is_public", Boolean, nullable=False, default=False),
    Column("created_ts", BigInteger, nullable=False),
    # Moved by every change to the room's current state and by every redaction, in the same
    # transaction (0016): a worker's cached auth state is still good while it is unchanged.
    Column("state_version", BigInteger, nullable=False, default=0, server_default="0"),
)

# One row per event. `json` is the full PDU (after redaction, the redacted PDU).
events = Table(
    "events",
    metadata,
    Column("stream_id", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(255), nullable=False, unique=True),
    Column("room_id", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("state_key", String(255), nullable=True),
    Column("sender", String(255), nullable=False),
    Column("depth", BigInteger, nullable=False),
    Column("origin_server_ts", BigInteger, nullable=False),
    Column("json", Text, nullable=False),
    # The event this state event replaced in the room's state, for state-at-timeline-start.
    Column("replaces_state", String(255), nullable=True),
    Column("redacted_by", String(255), nullable=True),
    # Relations (m.relates_to) extracted for edits, reactions and threads.
    Column("rel_type", String(64), nullable=True),
    Column("relates_to", String(255), nullable=True),
    # Outliers are known events that are not part of the room's timeline (e.g. remote auth chains).
    Column("outlier", Boolean, nullable=False, default=False),
    Column("txn_id", String(255), nullable=True),
    Column("device_id", String(255), nullable=True),
    # Server-computed unsigned data fixed at persist time (prev_content, replaces_state).
    Column("unsigned_json", Text, nullable=True),
    Index("events_room_stream", "room_id", "stream_id"),
    Index("events_relates", "relates_to", "rel_type"),
)

# Transaction-ID dedup for /send: (user, device, txn) maps to the event it produced.
event_txns = Table(
    "event_txns",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("txn_id", String(255), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id", "txn_id"),
)

current_state = Table(
    "current_state",
    metadata,
    Column("room_id", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("state_key", String(255), nullable=False),
    Column("event_id", String(255), nullable=False),
    # For m.room.member rows: the membership, so member queries need no JSON.
    Column("membership", String(32), nullable=True),
    Column("stream_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("room_id", "type", "state_key"),
    Index("current_state_member", "state_key", "type", "membership"),
)

forward_extremities = Table(
    "forward_extremities",
    metadata,
    Column("room_id", String(255), nullable=False),
    Column("event_id", String(255), nullable=False),
    PrimaryKeyConstraint("room_id", "event_id"),
)

receipts = Table(
    "receipts",
    metadata,
    Column("room_id", String(255), nullable=False),
    Column("receipt_type", String(64), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("thread_id", String(255), nullable=False, default=""),
    Column("event_id", String(255), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("room_id", "receipt_type", "user_id", "thread_id"),
    Index("receipts_room_stream", "room_id", "stream_id"),
    Index("receipts_stream", "stream_id"),
)

account_data = Table(
    "account_data",
    metadata,
    Column("user_id", String(255), nullable=False),
    # "" for global account data.
    Column("room_id", String(255), nullable=False, default=""),
    Column("type", String(255), nullable=False),
    Column("content", Text, nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "room_id", "type"),
    Index("account_data_user_stream", "user_id", "stream_id"),
)

filters = Table(
    "filters",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("filter_id", Integer, nullable=False),
    Column("json", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "filter_id"),
)

room_aliases = Table(
    "room_aliases",
    metadata,
    Column("alias", String(255), primary_key=True),
    Column("room_id", String(255), nullable=False),
    Column("creator", String(255), nullable=False),
    Index("room_aliases_room", "room_id"),
)

room_forgotten = Table(
    "room_forgotten",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("room_id", String(255), nullable=False),
    PrimaryKeyConstraint("user_id", "room_id"),
)

# Rooms a server admin blocked, and who did (migration 0022); kept when a room is purged.
blocked_rooms = Table(
    "blocked_rooms",
    metadata,
    Column("room_id", String(255), primary_key=True),
    Column("user_id", String(255), nullable=False),
)

server_keys = Table(
    "server_keys",
    metadata,
    Column("server_name", String(255), nullable=False),
    Column("key_id", String(255), nullable=False),
    Column("verify_key", LargeBinary, nullable=False),
    Column("valid_until_ts", BigInteger, nullable=False),
    Column("expired_ts", BigInteger, nullable=True),
    PrimaryKeyConstraint("server_name", "key_id"),
)

# Sticky events (MSC4354) waiting to be pushed to a server that newly joined a room, until it
# holds its join (bridge/sticky.py, homeserver/storage/sticky_pushes.py; migration 0040). A
# row lives from the join's arrival until the push is queued or given up, so a restart, or
# another worker taking the outbound queue over, resumes it.
sticky_pending_pushes = Table(
    "sticky_pending_pushes",
    metadata,
    Column("room_id", String(255), nullable=False),
    Column("destination", String(255), nullable=False),
    Column("join_event_id", String(255), nullable=False),
    Column("scheduled_ts", BigInteger, nullable=False),
    Column("next_attempt_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("room_id", "destination"),
)

# Rooms a worker is joining over federation, until when PDUs for them wait for the join
# (bridge/events_in.py, homeserver/storage/remote_joins.py; migration 0040): written only
# with several workers, so one that is not joining does not drop them as "unknown room".
# `joiner` tells apart workers joining the same room at once.
federation_joining_rooms = Table(
    "federation_joining_rooms",
    metadata,
    Column("room_id", String(255), nullable=False),
    Column("joiner", String(64), nullable=False),
    Column("until_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("room_id", "joiner"),
)
