"""Tables for the Client-Server modules beyond the core: media, push, presence,
user directory, search and reports.

Invariants:
- `media` rows exist before their bytes: a row with `uploaded_ts` NULL is a
  reserved ID (`/create`) whose content has not arrived yet.
- `event_push_actions` holds one row per (user, event) that notified; `event_stream`
  is the event's timeline position (`events.stream_id`, compared against read
  receipts), `stream_id` is the row's own position; `event_push_changes` holds the
  newest such position per (user, room), so /sync notices new counts.
- `presence.stream_id` and `push_rules_stream.stream_id` come from the server-wide
  stream, so /sync can tell what changed since a token.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)

from homeserver.storage.schema import metadata

media = Table(
    "media",
    metadata,
    Column("media_id", String(255), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("content_type", String(255), nullable=True),
    Column("upload_name", Text, nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("created_ts", BigInteger, nullable=False),
    # NULL until the content is uploaded (async upload via /create).
    Column("uploaded_ts", BigInteger, nullable=True),
    # For reserved IDs: when the reservation lapses.
    Column("expires_ts", BigInteger, nullable=True),
    Column("quarantined", Boolean, nullable=False, default=False),
    # Protected media (stickers, shared images) is skipped by every quarantine.
    Column("safe_from_quarantine", Boolean, nullable=False, default=False, server_default=false()),
    Index("media_user_pending", "user_id", "uploaded_ts"),
    Index("media_sha256", "sha256"),
)

media_thumbnails = Table(
    "media_thumbnails",
    metadata,
    Column("media_id", String(255), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("method", String(16), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    PrimaryKeyConstraint("media_id", "width", "height", "method"),
)

# User-defined push rules (server-default rules live in code; see push_rules_overrides).
push_rules = Table(
    "push_rules",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("rule_id", String(255), nullable=False),
    # Lower sorts first (higher priority) within a kind.
    Column("priority", Integer, nullable=False),
    Column("rule_json", Text, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    PrimaryKeyConstraint("user_id", "kind", "rule_id"),
)

# Per-user changes to server-default rules: enabled flag and/or actions.
push_rules_overrides = Table(
    "push_rules_overrides",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("rule_id", String(255), nullable=False),
    Column("enabled", Boolean, nullable=True),
    Column("actions_json", Text, nullable=True),
    PrimaryKeyConstraint("user_id", "rule_id"),
)

# The stream position of each user's latest push rule change (for m.push_rules in /sync).
push_rules_stream = Table(
    "push_rules_stream",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("stream_id", BigInteger, nullable=False),
)

event_push_actions = Table(
    "event_push_actions",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("room_id", String(255), nullable=False),
    # "main" for the main timeline, else the thread root's event ID.
    Column("thread_id", String(255), nullable=False),
    Column("event_stream", BigInteger, nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    Column("highlight", Boolean, nullable=False),
    Column("actions_json", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    # Unread counts read (user, room, event_stream); event_stream is unique per event, so
    # this is also the row's identity, and inserts append to their (user, room) range.
    # No query finds rows by event_id (0006 replaced the old (user_id, event_id) key).
    PrimaryKeyConstraint("user_id", "room_id", "event_stream"),
)

# /sync: the rooms whose unread counts changed since a token. One row per (user, room), at
# the stream position of its newest push actions, overwritten in place (0007: an index on
# event_push_actions cost one more B-tree per notifying member of every message).
event_push_changes = Table(
    "event_push_changes",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("room_id", String(255), nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    # The newest write of push actions made after their event's own transaction (0011):
    # kept unread counts (homeserver.storage.unread) are then counted afresh.
    Column("late_stream_id", BigInteger, nullable=True),
    PrimaryKeyConstraint("user_id", "room_id"),
    sqlite_with_rowid=False,
)

pushers = Table(
    "pushers",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("app_id", String(255), nullable=False),
    Column("pushkey", String(512), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("app_display_name", Text, nullable=False),
    Column("device_display_name", Text, nullable=False),
    Column("profile_tag", String(255), nullable=True),
    Column("lang", String(64), nullable=False),
    Column("data_json", Text, nullable=False),
    Column("device_id", String(255), nullable=True),
    Column("created_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "app_id", "pushkey"),
    Index("pushers_app_key", "app_id", "pushkey"),
)

presence = Table(
    "presence",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("state", String(32), nullable=False),
    Column("status_msg", Text, nullable=True),
    Column("last_active_ts", BigInteger, nullable=False),
    Column("currently_active", Boolean, nullable=False, default=False),
    Column("stream_id", BigInteger, nullable=False),
    Index("presence_stream", "stream_id"),
)

# Profiles of users seen in rooms (local and remote), from their latest join event.
user_directory = Table(
    "user_directory",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("display_name", Text, nullable=True),
    Column("avatar_url", Text, nullable=True),
    # Lower-cased "user_id display_name" for substring search.
    Column("search_text", Text, nullable=False),
)

# Searchable text of unencrypted messages, lower-cased, one row per (event, key).
event_search = Table(
    "event_search",
    metadata,
    Column("event_id", String(255), nullable=False),
    Column("key", String(32), nullable=False),
    Column("room_id", String(255), nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("event_id", "key"),
    Index("event_search_room_stream", "room_id", "stream_id"),
)

reports = Table(
    "reports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # "event", "room" or "user".
    Column("kind", String(16), nullable=False),
    Column("reporter", String(255), nullable=False),
    Column("room_id", String(255), nullable=True),
    Column("event_id", String(255), nullable=True),
    Column("target_user_id", String(255), nullable=True),
    Column("reason", Text, nullable=True),
    Column("score", Integer, nullable=True),
    Column("ts", BigInteger, nullable=False),
    Index("reports_ts", "ts"),
)

# User-interactive auth sessions, in the database so that every worker sees them (a
# multi-stage flow may reach a different worker at each step). `data_json` holds the
# session (stages done, remembered request parameters; never a password, see
# handlers/registration.py); rows expire `SESSION_TTL_MS` after their last use.
uia_sessions = Table(
    "uia_sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("last_used_ms", BigInteger, nullable=False),
    Column("data_json", Text, nullable=False),
    Index("uia_sessions_last_used", "last_used_ms"),
)

# OpenID tokens (POST /user/{userId}/openid/request_token), checked by third parties at
# GET /_matrix/federation/v1/openid/userinfo. Only the SHA-256 of a token is stored.
openid_tokens = Table(
    "openid_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("openid_tokens_expires", "expires_ms"),
)

# Login tokens (POST /login/get_token, used once by `m.login.token` at /login): a signed-in
# device lets another one sign in. Only the SHA-256 of a token is stored.
login_tokens = Table(
    "login_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("login_tokens_expires", "expires_ms"),
)

# Application services (homeserver.appservice.sender): per service, the stream position
# its events have been pushed up to, the last transaction ID it acknowledged, and the
# transaction in flight ({"txn_id", "event_ids", "upto"} JSON), resent as it was after a
# restart: the spec forbids changing a transaction's events on retries.
appservice_state = Table(
    "appservice_state",
    metadata,
    Column("service_id", String(255), primary_key=True),
    Column("stream_id", BigInteger, nullable=False),
    Column("txn_id", BigInteger, nullable=False),
    Column("pending_json", Text, nullable=True),
)

# Rooms an application service published in its own networks' directories
# (PUT /directory/list/appservice/{networkId}/{roomId}), listed by publicRooms with
# third_party_instance_id "<service id>|<network id>" or include_all_networks.
appservice_room_list = Table(
    "appservice_room_list",
    metadata,
    Column("appservice_id", String(255), nullable=False),
    Column("network_id", String(255), nullable=False),
    Column("room_id", String(255), nullable=False),
    PrimaryKeyConstraint("appservice_id", "network_id", "room_id"),
)

# Sliding sync (MSC4186) positions, when several workers serve one server: what each
# connection was sent as of a `pos`, so any worker can answer the next request. A
# connection keeps the position the client last named and the newest one.
sliding_sync_positions = Table(
    "sliding_sync_positions",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("conn_id", String(255), nullable=False),
    Column("pos", String(255), nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    Column("data_json", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id", "conn_id", "pos"),
)

# Profile fields other than the display name and avatar (which stay in `users`): `m.tz` and
# namespaced custom keys (spec v1.16), each value as JSON.
profile_fields = Table(
    "profile_fields",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("field", String(255), nullable=False),
    Column("value_json", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "field"),
)

# Single sign-on: the local account of each identity provider user (migration 0021).
user_external_ids = Table(
    "user_external_ids",
    metadata,
    Column("auth_provider", String(255), nullable=False),
    Column("external_id", String(255), nullable=False),
    Column("user_id", String(255), nullable=False),
    PrimaryKeyConstraint("auth_provider", "external_id"),
    Index("user_external_ids_user", "user_id"),
)

# Per-user rate limits set by a server admin (migration 0023); 0 and 0: not limited.
ratelimit_overrides = Table(
    "ratelimit_overrides",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("messages_per_second", BigInteger, nullable=False),
    Column("burst_count", BigInteger, nullable=False),
)

# Delayed events (MSC4140) still scheduled (migration 0024); sent or cancelled ones go.
delayed_events = Table(
    "delayed_events",
    metadata,
    Column("delay_id", String(64), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=True),
    Column("txn_id", String(255), nullable=True),
    Column("room_id", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("state_key", String(255), nullable=True),
    Column("content_json", Text, nullable=False),
    Column("delay_ms", BigInteger, nullable=False),
    Column("running_since", BigInteger, nullable=False),
    Column("send_ts", BigInteger, nullable=False),
    # MSC4354: the event is sent sticky for this long (migration 0036).
    Column("sticky_duration_ms", BigInteger, nullable=True),
    Index("delayed_events_user", "user_id"),
    Index("delayed_events_send_ts", "send_ts"),
    Index("delayed_events_target", "room_id", "type", "state_key"),
)

# Sticky events (MSC4354, migration 0036, homeserver/storage/sticky_events.py): the events
# that are sticky until `expires_at`, at `position` in the server-wide stream (the event's
# own stream ID, or a later one when a soft-failed sticky event is accepted after all).
# Expired rows are deleted by a periodic pass; readers skip them before that.
sticky_events = Table(
    "sticky_events",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("room_id", String(255), nullable=False),
    Column("sender", String(255), nullable=False),
    # A stream position of its own when a soft-failed event is accepted later: counted
    # when the stream's position is loaded at start-up (Database.load_stream_position).
    Column("position", BigInteger, nullable=False, info={"stream": True}),
    Column("expires_at", BigInteger, nullable=False),
    Column("soft_failed", Boolean, nullable=False, server_default=false()),
    Index("sticky_events_room_position", "room_id", "position"),
    Index("sticky_events_position", "position"),
    Index("sticky_events_expires", "expires_at"),
)

# The OAuth 2.0 API (migration 0026, homeserver/handlers/oauth.py). Registered clients, by
# a digest of their metadata (identical registrations share one client_id).
oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("metadata_json", Text, nullable=False),
    Column("created_ts", BigInteger, nullable=False),
)

# Authorisation codes not yet exchanged (single use, short-lived); only their digest is kept.
oauth_codes = Table(
    "oauth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("expires_ts", BigInteger, nullable=False),
)

# Device authorisation grants (RFC 8628) until the client collects its tokens: user_id is
# set when the user approves, `denied` when they refuse. `last_poll_ts` and `interval_s`
# (migration 0028) tell a client polling too fast to slow down.
oauth_device_grants = Table(
    "oauth_device_grants",
    metadata,
    Column("device_code_hash", String(64), primary_key=True),
    Column("user_code", String(16), nullable=False, unique=True),
    Column("client_id", String(64), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("scope", Text, nullable=False),
    Column("expires_ts", BigInteger, nullable=False),
    Column("user_id", String(255), nullable=True),
    Column("denied", Boolean, nullable=False, default=False),
    Column("last_poll_ts", BigInteger, nullable=True),
    Column("interval_s", Integer, nullable=False, default=5, server_default="5"),
)

# Devices signed in through the OAuth 2.0 API, and the client each was issued to.
oauth_sessions = Table(
    "oauth_sessions",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("device_id", String(255), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("scope", Text, nullable=False),
    Column("created_ts", BigInteger, nullable=False),
)

# Refresh tokens whose successor is in use (migration 0026), remembered for a while: one of
# them coming back means two parties hold the session, and the OAuth token endpoint ends it.
spent_refresh_tokens = Table(
    "spent_refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("device_id", String(255), nullable=False),
    Column("spent_ts", BigInteger, nullable=False),
    Index("spent_refresh_tokens_ts", "spent_ts"),
    Index("spent_refresh_tokens_device", "user_id", "device_id"),
)

# Users who approved, in the account pages, replacing their cross-signing keys without
# user-interactive auth (the `m.oauth` stage), until `until_ts`.
cross_signing_reset_grants = Table(
    "cross_signing_reset_grants",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("until_ts", BigInteger, nullable=False),
)

# Rendezvous sessions (MSC4108, migration 0027): small blobs two devices exchange while one
# signs the other in by QR code. Short-lived; `etag` changes with every write.
rendezvous_sessions = Table(
    "rendezvous_sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("body", Text, nullable=False),
    Column("etag", String(64), nullable=False),
    Column("modified_ts", BigInteger, nullable=False),
    Column("expires_ts", BigInteger, nullable=False),
    Index("rendezvous_sessions_expiry", "expires_ts"),
)

# Third-party identifiers (email addresses) on accounts (migration 0032). Email addresses are
# stored lower-cased; an address belongs to one account at most.
user_threepids = Table(
    "user_threepids",
    metadata,
    Column("medium", String(16), nullable=False),
    Column("address", String(255), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("validated_at", BigInteger, nullable=False),
    Column("added_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("medium", "address"),
    Index("user_threepids_user", "user_id"),
)

# Validation sessions for `…/requestToken` (migration 0032): one per (client_secret, medium,
# address), as the spec's send_attempt needs. Only the SHA-256 of the emailed token is kept;
# `expires_ts` bounds both the link and, once validated, the session's use.
threepid_validation_sessions = Table(
    "threepid_validation_sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("client_secret", String(255), nullable=False),
    Column("medium", String(16), nullable=False),
    Column("address", String(255), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("send_attempt", BigInteger, nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    Column("validated_ts", BigInteger, nullable=True),
    Column("expires_ts", BigInteger, nullable=False),
    # Where the browser is sent once the link is opened (migration 0035).
    Column("next_link", Text, nullable=True),
    Index("threepid_validation_sessions_secret", "client_secret", "medium", "address", unique=True),
    Index("threepid_validation_sessions_expiry", "expires_ts"),
)

# Email notifications (migration 0033): per user with an email pusher, the push-action stream
# position emailed about so far (newer actions may be emailed) and when the last notification
# email was sent (the throttle).
email_notif_state = Table(
    "email_notif_state",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("last_stream_id", BigInteger, nullable=False),
    Column("last_sent_ts", BigInteger, nullable=False),
)

# Thread subscriptions (MSC4306, migration 0038, homeserver/storage/thread_subscriptions.py):
# one row per (user, room, thread root) ever subscribed, holding its latest state. `stream_id`
# comes from the server-wide stream and moves with every change (sliding sync's MSC4308
# extension reads a user's changes by it). An unsubscription keeps where the room was then
# (`unsubscribed_at_stream`/`_depth`), so an automatic subscription caused by an event from
# before it is refused.
thread_subscriptions = Table(
    "thread_subscriptions",
    metadata,
    Column("user_id", String(255), nullable=False),
    Column("room_id", String(255), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("subscribed", Boolean, nullable=False),
    Column("automatic", Boolean, nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    Column("unsubscribed_at_stream", BigInteger, nullable=True),
    Column("unsubscribed_at_depth", BigInteger, nullable=True),
    PrimaryKeyConstraint("user_id", "room_id", "event_id"),
    Index("thread_subscriptions_thread", "room_id", "event_id"),
    Index("thread_subscriptions_user_stream", "user_id", "stream_id"),
    Index("thread_subscriptions_stream", "stream_id", unique=True),
)
