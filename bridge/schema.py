"""Tables for federation: the outbound queue, received transactions, event state and server keys.

Invariants:
- `federation_outbox` rows are deleted only after the destination acknowledged the
  transaction that carried them, so nothing queued is lost across crashes or restarts.
- `federation_event_state` has one row per event this server has placed in a room's DAG
  (local or remote); its `state_group` is the room state *after* the event. A rejected
  event's group is the state before it (it changes nothing). Outliers have no group.
- `federation_state_groups` store a state as a delta against `prev_group` (or a full
  snapshot when `prev_group` is NULL); chains stay short (see bridge.state).
- `federation_server_key_json` keeps remote servers' signed key responses verbatim, so this
  server can act as a notary and re-serve them unchanged.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, PrimaryKeyConstraint, String, Table, Text

from homeserver.storage.schema import metadata

# SQLite only auto-increments an INTEGER PRIMARY KEY.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

federation_outbox = Table(
    "federation_outbox",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("destination", String(255), nullable=False),
    # "pdu" rows name an event; "edu" rows carry the EDU JSON.
    Column("kind", String(8), nullable=False),
    Column("event_id", String(255), nullable=True),
    Column("edu_json", Text, nullable=True),
    Column("created_ts", BigInteger, nullable=False),
    Index("federation_outbox_dest", "destination", "id"),
)

federation_destinations = Table(
    "federation_destinations",
    metadata,
    Column("destination", String(255), primary_key=True),
    Column("failures", Integer, nullable=False, default=0),
    Column("retry_interval_ms", BigInteger, nullable=False, default=0),
    Column("next_retry_ts", BigInteger, nullable=False, default=0),
    Column("last_success_ts", BigInteger, nullable=True),
    # When the current run of failures began (None while transactions go through).
    Column("failure_ts", BigInteger, nullable=True),
)

# Per destination and room, the position (events.stream_id) of the last event delivered.
federation_destination_rooms = Table(
    "federation_destination_rooms",
    metadata,
    Column("destination", String(255), nullable=False),
    Column("room_id", String(255), nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("destination", "room_id"),
)

federation_received_txns = Table(
    "federation_received_txns",
    metadata,
    Column("origin", String(255), nullable=False),
    Column("txn_id", String(255), nullable=False),
    Column("response_json", Text, nullable=False),
    Column("received_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("origin", "txn_id"),
    Index("federation_received_txns_ts", "received_ts"),
)

federation_state_groups = Table(
    "federation_state_groups",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("room_id", String(255), nullable=False),
    Column("prev_group", BigInteger, nullable=True),
    # Number of deltas between this group and its full snapshot (0 for a snapshot).
    Column("chain_length", Integer, nullable=False),
    # JSON list of [type, state_key, event_id].
    Column("delta_json", Text, nullable=False),
)

federation_event_state = Table(
    "federation_event_state",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("room_id", String(255), nullable=False),
    # NULL for outliers (auth chain events): only their rejection status is tracked.
    Column("state_group", BigInteger, nullable=True),
    Column("rejected_reason", Text, nullable=True),
    # Passed the checks against its auth events and prior state, but not against current state.
    Column("soft_failed", Boolean, nullable=False, default=False),
)

federation_server_key_json = Table(
    "federation_server_key_json",
    metadata,
    Column("server_name", String(255), nullable=False),
    Column("key_id", String(255), nullable=False),
    # The server the response came from (the server itself, or a notary).
    Column("from_server", String(255), nullable=False),
    Column("valid_until_ts", BigInteger, nullable=False),
    Column("fetched_ts", BigInteger, nullable=False),
    Column("key_json", Text, nullable=False),
    PrimaryKeyConstraint("server_name", "key_id", "from_server"),
)
