"""Tables for end-to-end encryption support (keys, to-device, device lists, key backup).

The server stores only public keys, signatures, opaque client-encrypted blobs
and to-device envelopes; it never sees plaintext. Invariants:

- `e2e_one_time_keys` rows are deleted as they are claimed, so a key is handed out at most once.
- `device_inbox` rows carry a `stream_id` from the server-wide stream; a device's row is
  deleted once that device syncs with a token at or past it (delivery confirmed).
- `e2e_stream_marks` remembers the highest stream position ever used by rows that are
  later deleted (to-device), so a restart never hands out a position a client already holds.
- `device_list_changes` keeps one row per user: the stream position of that user's latest
  device or cross-signing key change.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, PrimaryKeyConstraint, String, Table, Text

from homeserver.storage.schema import metadata

e2e_device_keys = Table(
    "e2e_device_keys",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    # The signed device keys object exactly as uploaded (signatures added later live in e2e_signatures).
    Column("key_json", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id"),
)

e2e_one_time_keys = Table(
    "e2e_one_time_keys",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("algorithm", String(64), nullable=False),
    Column("key_id", String(255), nullable=False),
    Column("key_json", Text, nullable=False),
    # Upload time: claims hand out keys in upload order.
    Column("ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id", "algorithm", "key_id"),
    Index("e2e_one_time_keys_claim", "user_id", "device_id", "algorithm", "ts"),
)

e2e_fallback_keys = Table(
    "e2e_fallback_keys",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("algorithm", String(64), nullable=False),
    Column("key_id", String(255), nullable=False),
    Column("key_json", Text, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("user_id", "device_id", "algorithm"),
)

# Master, self-signing and user-signing keys; one current key of each type per user.
e2e_cross_signing_keys = Table(
    "e2e_cross_signing_keys",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("key_type", String(32), nullable=False),
    # The unpadded base64 public key (the "<key id>" part of "ed25519:<key id>").
    Column("public_key", String(255), nullable=False),
    Column("key_json", Text, nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "key_type"),
)

# Signatures uploaded through /keys/signatures/upload, merged into keys on /keys/query.
# target_key_id is a device ID or a cross-signing public key of target_user_id.
e2e_signatures = Table(
    "e2e_signatures",
    metadata,
    Column("target_user_id", String(255), nullable=False),
    Column("target_key_id", String(255), nullable=False),
    Column("signer_user_id", String(255), nullable=False),
    Column("signer_key_id", String(255), nullable=False),
    Column("signature", String(255), nullable=False),
    PrimaryKeyConstraint("target_user_id", "target_key_id", "signer_user_id", "signer_key_id"),
)

device_list_changes = Table(
    "device_list_changes",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("stream_id", BigInteger, nullable=False),
    Index("device_list_changes_stream", "stream_id"),
)

device_inbox = Table(
    "device_inbox",
    metadata,
    Column("stream_id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    # {"sender", "type", "content"} as delivered in /sync.
    Column("message_json", Text, nullable=False),
    Index("device_inbox_device_stream", "user_id", "device_id", "stream_id"),
)

# /sendToDevice transaction IDs, so a retried request is not delivered twice.
device_inbox_txns = Table(
    "device_inbox_txns",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("txn_id", String(255), nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id", "txn_id"),
    Index("device_inbox_txns_created", "created_ts"),
)

e2e_stream_marks = Table(
    "e2e_stream_marks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("stream_id", BigInteger, nullable=False),
)

e2e_room_keys_versions = Table(
    "e2e_room_keys_versions",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("algorithm", String(255), nullable=False),
    Column("auth_data", Text, nullable=False),
    # Bumped whenever the backup's keys change, so clients can tell their view is stale.
    Column("etag", BigInteger, nullable=False, default=0),
    Column("deleted", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("user_id", "version"),
)

e2e_room_keys = Table(
    "e2e_room_keys",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("room_id", String(255), nullable=False),
    Column("session_id", String(255), nullable=False),
    Column("first_message_index", BigInteger, nullable=False),
    Column("forwarded_count", BigInteger, nullable=False),
    Column("is_verified", Boolean, nullable=False),
    # Opaque, encrypted by the client with the backup's public key.
    Column("session_data", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "version", "room_id", "session_id"),
)
