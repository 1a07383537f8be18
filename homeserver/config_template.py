"""The first-run configuration file that `sotto generate-config` (and `make run`) writes."""

from __future__ import annotations

import secrets


def generate_config_yaml(server_name: str, port: int = 8008) -> str:
    """The first-run config written by `sotto generate-config`."""
    return f"""\
# Sotto homeserver configuration. See config/README.md for every option.
server_name: "{server_name}"
# The URL clients use to reach this server (defaults to http://<bind_address>:<port>).
# public_baseurl: "https://matrix.example.org"
signing_key_path: data/signing.key
media_store_path: data/media
log_level: INFO
default_room_version: "12"

listener:
  bind_address: 127.0.0.1
  port: {port}

database:
  # SQLite by default; for PostgreSQL: postgresql+asyncpg://user@host/dbname
  url: sqlite+aiosqlite:///data/homeserver.db

registration:
  # Open registration is off; create accounts with `sotto register-user`,
  # or enable token-based registration.
  enabled: false
  requires_token: true
  # With email on (below), ask every new account for an address:
  # require_email: true
  # Terms new users accept (m.login.terms; see config/README.md, `registration.terms`):
  # terms:
  #   version: "1.0"
  #   policies:
  #     privacy_policy:
  #       en: {{name: Privacy policy, url: "https://example.org/privacy"}}
  shared_secret: "{secrets.token_urlsafe(32)}"

server_notices:
  # The user that sends official notices to users (admin API: send_server_notice).
  localpart: notices

oauth:
  # The spec's OAuth 2.0 API: apps such as Element X sign users in through the browser, on
  # this server's own sign-in page. The password login keeps working either way.
  enabled: false

# Privacy (Synapse's defaults): the room directory is for signed-in users of this server,
# the user directory finds people who share a room with you or are in a public room, and
# anyone may read a profile (see config/README.md).
# room_directory:
#   allow_public_rooms_without_auth: true
#   allow_public_rooms_over_federation: true
# user_directory:
#   search_all_users: true
# profiles:
#   require_auth_for_profile_requests: true
#   limit_profile_requests_to_users_who_share_rooms: true
#   allow_profile_lookup_over_federation: false
#   include_profile_data_on_invite: false

email:
  # Email addresses on accounts, login by address and "forgot password" links, sent
  # through this SMTP server (see config/README.md, `email`).
  enabled: false
  # smtp_host: smtp.example.org
  # smtp_port: 587
  # smtp_user: matrix@example.org
  # smtp_pass_file: config/smtp_password
  # require_transport_security: true
  # notif_from: "Example Matrix <noreply@example.org>"
  # Email notifications for users who turn them on (pushers of kind "email"):
  # enable_notifs: true
  # notif_for_new_users: true   # an address given at registration gets notifications
"""
