"""Configuration: a YAML file validated once into typed dataclasses.

`load_config` is the only place that reads the file; everything else receives a
`Config`. Unknown keys are rejected so typos do not silently do nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from homeserver.config_email import EmailConfig, check_email
from homeserver.config_errors import ConfigError
from homeserver.config_template import generate_config_yaml

__all__ = ["ConfigError", "EmailConfig", "generate_config_yaml"]

LOCALPART_RE = re.compile(r"[a-z0-9._=/+-]+")


@dataclass(slots=True)
class ListenerConfig:
    bind_address: str = "127.0.0.1"
    port: int = 8008
    # Serve the client API over TLS itself (else put a TLS-terminating proxy in front).
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None
    # Behind a reverse proxy: take the client's address from the last X-Forwarded-For entry
    # (the one the proxy added), for per-address rate limits and logs. Only with a proxy
    # in front: anyone reaching the listener directly could name any address.
    x_forwarded: bool = False


@dataclass(slots=True)
class FederationConfig:
    enabled: bool = False
    bind_address: str = "127.0.0.1"
    port: int = 8448
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None
    # Verify remote servers' TLS certificates; a custom CA bundle may be added.
    verify_certificates: bool = True
    custom_ca_file: str | None = None
    # Loopback and private ranges are refused unless listed here (test setups).
    ip_range_whitelist: list[str] = field(default_factory=list)
    # Notary servers asked for keys a server cannot serve itself (none by default).
    trusted_key_servers: list[str] = field(default_factory=list)
    # Outbound retry backoff: doubles from the minimum up to the maximum.
    retry_min_ms: int = 2_000
    retry_max_ms: int = 3_600_000


@dataclass(slots=True)
class DatabaseConfig:
    url: str = "sqlite+aiosqlite:///data/homeserver.db"
    # PostgreSQL: connections each process keeps for queries (requests beyond it queue fairly).
    # Room locks and leader election use up to 20 more. Ignored for SQLite.
    pool_size: int = 20


@dataclass(slots=True)
class RedisConfig:
    # Cross-worker notifications (several `sotto serve` processes on one PostgreSQL database).
    enabled: bool = False
    url: str = "redis://127.0.0.1:6379/0"
    # Pub/sub channel; servers sharing one Redis need different channels.
    channel: str = "sotto"


@dataclass(slots=True)
class WorkersConfig:
    # Worker processes started by `sotto serve` (overridden by --workers); more than one
    # needs PostgreSQL and Redis.
    count: int = 1
    # This process is worker `index` of `count` (0 to count - 1): set by `sotto serve
    # --workers` in each worker it starts, or in the config of each of `count` processes
    # started separately (one host, behind a load balancer). Such a process serves instead
    # of supervising; its other listeners (federation) bind with SO_REUSEPORT too.
    index: int | None = None
    # The workers' private directory (mode 0700) of Unix sockets, over which a busy room's
    # messages go to the worker that owns the room (homeserver.forwarding). `sotto serve
    # --workers` makes one; separately started processes name the same one.
    sockets: str | None = None
    # Workers on several hosts instead: every worker's "host:port" for forwarding, by
    # index (this one listens on its own entry's port, on `listen_address`), and the secret
    # they prove to each other (at least 32 characters; the same in every worker's config).
    peers: list[str] | None = None
    secret: str | None = None
    listen_address: str = "0.0.0.0"


@dataclass(slots=True)
class RegistrationConfig:
    # Open registration is off: accounts come from tokens or the admin CLI.
    enabled: bool = False
    requires_token: bool = True
    shared_secret: str | None = None
    # POST /register?kind=guest: accounts without a password that may read and join rooms
    # whose m.room.guest_access is can_join (independent of `enabled`).
    allow_guests: bool = False
    # Every new account proves an email address (the m.login.email.identity stage); needs
    # `email.enabled`. Off, the stage is offered as an option (Synapse's
    # `registrations_require_3pid: [email]`).
    require_email: bool = False
    # Policies new users accept (the m.login.terms stage; Synapse's user_consent with
    # require_at_registration): None asks for none. Checked into a TermsConfig.
    terms: TermsConfig | None = None


@dataclass(slots=True, frozen=True)
class TermsConfig:
    # The version of the policies, recorded with each user's acceptance: a new version is a
    # new set of documents (give them new URLs).
    version: str
    # Policy ID -> language -> {"name": ..., "url": ...}; the operator hosts the documents.
    policies: dict[str, dict[str, dict[str, str]]]
    # Local users who have not accepted this version are refused events (403
    # M_CONSENT_NOT_GIVEN with their consent page's link) until they do (handlers/consent.py).
    block_events_until_consent: bool = False
    # A server notice (m.text; `%(consent_uri)s` becomes the user's link) sent once per
    # version to each user who syncs without having accepted it; needs server notices.
    server_notice: str | None = None


@dataclass(slots=True)
class LimitsConfig:
    max_request_bytes: int = 1024 * 1024
    max_upload_bytes: int = 50 * 1024 * 1024
    max_sync_timeout_ms: int = 60_000


@dataclass(slots=True)
class RateLimitConfig:
    enabled: bool = True
    # Token-bucket settings: sustained per-second rate and burst size.
    messages_per_second: float = 10.0
    messages_burst: int = 50
    login_per_second: float = 0.2
    login_burst: int = 5
    register_per_second: float = 0.2
    register_burst: int = 5
    # Per user (admins are exempt): joins (and room creation), invites sent, invites one user
    # receives, media uploads, one-time key claims (homeserver.ratelimit, homeserver.api.guard).
    joins_per_second: float = 0.5
    joins_burst: int = 20
    invites_per_second: float = 0.5
    invites_burst: int = 20
    invites_received_per_second: float = 0.05
    invites_received_burst: int = 10
    media_uploads_per_second: float = 1.0
    media_uploads_burst: int = 20
    key_claims_per_second: float = 5.0
    key_claims_burst: int = 50
    # Per user: /sendToDevice requests (each may address many devices), typing notifications,
    # and read receipts with read markers (clients send these as the user scrolls).
    to_device_per_second: float = 10.0
    to_device_burst: int = 100
    typing_per_second: float = 1.0
    typing_burst: int = 20
    receipts_per_second: float = 5.0
    receipts_burst: int = 50
    # Federation: per authenticated origin, and per address for requests failing authentication.
    federation_per_second: float = 50.0
    federation_burst: int = 500
    federation_unauthenticated_per_second: float = 1.0
    federation_unauthenticated_burst: int = 20
    # Validation emails (…/requestToken), per address and per client address (Synapse's
    # rc_3pid_validation: one every ~5 minutes, 5 at once).
    threepid_validation_per_second: float = 0.003
    threepid_validation_burst: int = 5
    # Per user: user directory searches (clients search as the user types; each scans the directory).
    user_directory_search_per_second: float = 5.0
    user_directory_search_burst: int = 20


@dataclass(slots=True)
class PushConfig:
    # Push gateways on loopback, private or other special addresses are refused unless their
    # address is in one of these CIDR ranges (e.g. 127.0.0.0/8 for a local gateway).
    allowed_gateway_ranges: list[str] = field(default_factory=list)


@dataclass(slots=True)
class MediaConfig:
    # URL previews (/preview_url) make the server fetch pages clients name: off by default.
    url_preview_enabled: bool = False
    # Loopback, private and link-local targets are refused unless in one of these CIDR ranges.
    url_preview_allowed_ranges: list[str] = field(default_factory=list)
    # Media cached from other servers is dropped this long after it was fetched (fetched again
    # when next asked for): milliseconds or "30d"; None keeps it.
    remote_media_lifetime: Any = None


@dataclass(slots=True)
class VoipConfig:
    # TURN servers handed to clients by /voip/turnServer, e.g. "turn:turn.example.org?transport=udp".
    # None: the endpoint answers {} and clients call without TURN.
    turn_uris: list[str] = field(default_factory=list)
    # coturn's `static-auth-secret` (use-auth-secret): each user gets credentials valid for
    # turn_user_lifetime_ms. Or fixed credentials for every user instead:
    turn_shared_secret: str | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    turn_user_lifetime_ms: int = 24 * 3600 * 1000


@dataclass(slots=True)
class SessionsConfig:
    # Clients that send `refresh_token: true` at login or registration get access tokens
    # that expire after this long, and a refresh token to renew them (POST /refresh).
    # null: no refresh tokens; every access token lasts until logout.
    refreshable_access_token_lifetime_ms: int | None = 300_000


@dataclass(slots=True)
class SupportConfig:
    # Served at /.well-known/matrix/support (404 while both are empty). Each contact has a
    # `role` ("m.role.admin", "m.role.security" or a namespaced role) and a `matrix_id`
    # and/or an `email_address`.
    contacts: list[dict[str, str]] = field(default_factory=list)
    support_page: str | None = None


@dataclass(slots=True)
class ServerNoticesConfig:
    # The system user's localpart; None: server notices are off.
    localpart: str | None = None
    display_name: str = "Server Notices"
    room_name: str = "Server Notices"


@dataclass(slots=True)
class RtcConfig:
    # MatrixRTC transports (MSC4143) for Element Call, e.g.
    # {"type": "livekit", "livekit_service_url": "https://livekit-jwt.example.org"}.
    transports: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class DelayedEventsConfig:
    """Delayed events (MSC4140, unstable: what Element Call uses to leave a call when the
    client is gone)."""

    enabled: bool = True
    # The longest delay a client may ask for (M_MAX_DELAY_EXCEEDED beyond it).
    max_delay_ms: int = 24 * 3600 * 1000
    # Delayed events one user may have scheduled at once (429 beyond it).
    max_per_user: int = 100


@dataclass(slots=True)
class StickyEventsConfig:
    """Sticky events (MSC4354, unstable: Element Call's call memberships and notifications)."""

    enabled: bool = True


@dataclass(slots=True)
class ThreadSubscriptionsConfig:
    """Thread subscriptions (MSC4306, with MSC4308's sliding sync extension; unstable, as
    Synapse's `experimental_features.msc4306_enabled`): Element X's thread notifications."""

    enabled: bool = False


@dataclass(slots=True)
class OAuthConfig:
    """The OAuth 2.0 API (spec v1.15+): Sotto is its own authorisation server, so clients
    such as Element X sign in through the browser instead of sending the password."""

    enabled: bool = False
    # Access tokens issued through it expire after this long (the spec wants them
    # short-lived); clients renew them with their refresh token.
    access_token_lifetime_ms: int = 300_000


@dataclass(slots=True)
class RetentionConfig:
    """Message retention (Synapse's `retention`, MSC1763): old messages are purged by a job.
    Durations are milliseconds or strings such as "30d", "12h", "1y"."""

    enabled: bool = False
    # {"max_lifetime": ...} for rooms without an m.room.retention state event.
    default_policy: dict[str, Any] = field(default_factory=dict)
    # A room's own max_lifetime is kept within these bounds.
    allowed_lifetime_min: Any = None
    allowed_lifetime_max: Any = None
    # Synapse's purge jobs: the shortest `interval` among them is how often the job runs
    # (their lifetime ranges are not used: every room is looked at on every run).
    purge_jobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class OidcProviderConfig:
    """One OpenID Connect identity provider for single sign-on, in the keys of Synapse's
    `oidc_providers` entries (so an existing config carries over)."""

    issuer: str = ""
    client_id: str = ""
    client_secret: str | None = None
    # client_secret_basic, client_secret_post, or none (a public client).
    client_auth_method: str = "client_secret_basic"
    # The ID clients use in /login/sso/redirect/{idpId}; "oidc-" is put in front, as Synapse does.
    idp_id: str = "oidc"
    idp_name: str = "OIDC"
    idp_icon: str | None = None
    idp_brand: str | None = None
    scopes: list[str] = field(default_factory=lambda: ["openid", "profile"])
    # Read the endpoints from <issuer>/.well-known/openid-configuration; otherwise set them.
    discover: bool = True
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    jwks_uri: str | None = None
    # "auto": claims from the ID token (the userinfo endpoint without the openid scope);
    # "userinfo_endpoint": always ask the userinfo endpoint.
    user_profile_method: str = "auto"
    # PKCE: "auto" (when the provider says it supports S256), "always" or "never".
    pkce_method: str = "auto"
    # An IdP user whose localpart is an existing account's signs in as that account.
    # Otherwise a number is added to the localpart until it is free.
    allow_existing_users: bool = False
    # {"config": {"subject_claim": "sub", "localpart_template": "{{ user.preferred_username }}",
    # "display_name_template": "{{ user.name }}"}}; templates are "{{ user.<claim> }}",
    # optionally "| lower".
    user_mapping_provider: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class PolicyServerConfig:
    # Act as a Policy Server (spec v1.18) for rooms whose `m.room.policy` names this server
    # and the key below, and in which a local user is joined. Needs federation.
    enabled: bool = False
    # A key of its own, apart from the server's signing key, as the spec advises: rooms put
    # its public half in their state (served at /.well-known/matrix/policy_server).
    signing_key_path: str = "data/policy_server.key"
    # Events are refused a signature when a string in their content contains one of these
    # (case-insensitive), or their sender or sender's server matches one of these globs.
    keywords: list[str] = field(default_factory=list)
    blocked_users: list[str] = field(default_factory=list)
    blocked_servers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TracingConfig:
    # OpenTelemetry traces (homeserver/tracing.py), sent over OTLP/HTTP (protobuf).
    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    # Extra headers for the collector (an API key, say).
    headers: dict[str, str] = field(default_factory=dict)
    service_name: str = "sotto"
    # Share of traces kept (0 to 1), decided where a trace starts.
    sample_ratio: float = 1.0
    # Follow an incoming `traceparent` header (a proxy or another server that traces
    # started it). Off: any client could otherwise choose its trace and force sampling.
    accept_remote_context: bool = False
    # How long finished spans wait to be sent together.
    export_delay_ms: int = 5_000


@dataclass(slots=True)
class RoomDirectoryConfig:
    """Who may read the public room directory (Synapse's options of the same names)."""

    # GET /publicRooms without an access token (a search, POST, always needs one).
    allow_public_rooms_without_auth: bool = False
    # Other servers may read it (/_matrix/federation/v1/publicRooms); off: 403 M_FORBIDDEN.
    allow_public_rooms_over_federation: bool = False


@dataclass(slots=True)
class UserDirectoryConfig:
    # Search every local user and every user seen in a room. Off: only users who share a
    # room with the searcher or are in a public room (Synapse's user_directory.search_all_users).
    search_all_users: bool = False


@dataclass(slots=True)
class ProfilesConfig:
    """Who may read profiles: clients (GET /profile/{userId} and its fields), other servers
    (their profile queries), and invitees' profiles in invites."""

    # An access token is needed (401 M_MISSING_TOKEN without one).
    require_auth_for_profile_requests: bool = False
    # The caller must share a joined room with the user (403 M_FORBIDDEN), or be that user.
    # Needs to know who asks, so it implies require_auth_for_profile_requests (in Synapse,
    # without that option it has no effect).
    limit_profile_requests_to_users_who_share_rooms: bool = False
    # Other servers' profile queries are answered (off: 403 M_FORBIDDEN).
    allow_profile_lookup_over_federation: bool = True
    # Invites this server makes carry the invitee's display name and avatar, as joins do.
    include_profile_data_on_invite: bool = True


@dataclass(slots=True)
class Config:
    server_name: str = "localhost:8008"
    public_baseurl: str | None = None
    signing_key_path: str = "data/signing.key"
    media_store_path: str = "data/media"
    log_level: str = "INFO"
    # "text" for people, "json" (one object per line) for log collectors.
    log_format: str = "text"
    default_room_version: str = "12"
    metrics_enabled: bool = True
    # Peers (CIDR ranges) that may read /metrics; others get 403. Loopback by default: the
    # figures describe the server's load and users, and the listener may be public.
    metrics_allow: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # bcrypt cost factor for password hashes (tests lower it; 12 is the production default).
    bcrypt_rounds: int = 12
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    push: PushConfig = field(default_factory=PushConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    voip: VoipConfig = field(default_factory=VoipConfig)
    server_notices: ServerNoticesConfig = field(default_factory=ServerNoticesConfig)
    policy_server: PolicyServerConfig = field(default_factory=PolicyServerConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    delayed_events: DelayedEventsConfig = field(default_factory=DelayedEventsConfig)
    sticky_events: StickyEventsConfig = field(default_factory=StickyEventsConfig)
    thread_subscriptions: ThreadSubscriptionsConfig = field(default_factory=ThreadSubscriptionsConfig)
    rtc: RtcConfig = field(default_factory=RtcConfig)
    oauth: OAuthConfig = field(default_factory=OAuthConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    room_directory: RoomDirectoryConfig = field(default_factory=RoomDirectoryConfig)
    user_directory: UserDirectoryConfig = field(default_factory=UserDirectoryConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    # Single sign-on through OpenID Connect providers (homeserver/handlers/sso.py).
    oidc_providers: list[OidcProviderConfig] = field(default_factory=list)
    support: SupportConfig = field(default_factory=SupportConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    # Application service registration files (YAML, as Synapse's app_service_config_files).
    app_services: list[str] = field(default_factory=list)
    # Where relative paths in this config are resolved from (the file's directory's parent).
    base_dir: str = "."

    def resolve_path(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    @property
    def baseurl(self) -> str:
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/")
        scheme = "https" if self.listener.tls_certificate_path else "http"
        return f"{scheme}://{self.listener.bind_address}:{self.listener.port}"


def _build(cls: type[Any], data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key: {where}{key}")
        ftype = fields[key].type
        sub = _NESTED.get(str(ftype))
        kwargs[key] = _build(sub, value or {}, f"{where}{key}.") if sub else value
    return cls(**kwargs)


_NESTED: dict[str, type[Any]] = {
    "ListenerConfig": ListenerConfig,
    "FederationConfig": FederationConfig,
    "DatabaseConfig": DatabaseConfig,
    "RedisConfig": RedisConfig,
    "WorkersConfig": WorkersConfig,
    "RegistrationConfig": RegistrationConfig,
    "LimitsConfig": LimitsConfig,
    "RateLimitConfig": RateLimitConfig,
    "PushConfig": PushConfig,
    "MediaConfig": MediaConfig,
    "VoipConfig": VoipConfig,
    "SupportConfig": SupportConfig,
    "SessionsConfig": SessionsConfig,
    "ServerNoticesConfig": ServerNoticesConfig,
    "PolicyServerConfig": PolicyServerConfig,
    "RetentionConfig": RetentionConfig,
    "DelayedEventsConfig": DelayedEventsConfig,
    "StickyEventsConfig": StickyEventsConfig,
    "ThreadSubscriptionsConfig": ThreadSubscriptionsConfig,
    "RtcConfig": RtcConfig,
    "OAuthConfig": OAuthConfig,
    "EmailConfig": EmailConfig,
    "TracingConfig": TracingConfig,
    "RoomDirectoryConfig": RoomDirectoryConfig,
    "UserDirectoryConfig": UserDirectoryConfig,
    "ProfilesConfig": ProfilesConfig,
}


def config_from_dict(data: dict[str, Any], base_dir: str = ".") -> Config:
    cfg: Config = _build(Config, data, "")
    cfg.base_dir = base_dir
    if not cfg.server_name:
        raise ConfigError("server_name is required")
    if cfg.log_format not in ("text", "json"):
        raise ConfigError("log_format must be text or json")
    if not isinstance(cfg.database.pool_size, int) or not 1 <= cfg.database.pool_size <= 1000:
        raise ConfigError("database.pool_size must be a whole number from 1 to 1000")
    index, count = cfg.workers.index, cfg.workers.count
    if type(count) is not int or count < 1:
        raise ConfigError("workers.count must be a whole number of at least 1")
    if index is not None and (type(index) is not int or not 0 <= index < count):
        raise ConfigError("workers.index must be a whole number from 0 to workers.count - 1")
    _check_worker_peers(cfg.workers)
    _check_voip(cfg.voip)
    _check_support(cfg.support)
    _check_app_services(cfg)
    _check_policy_server(cfg)
    _check_retention(cfg.retention)
    _check_media(cfg.media)
    _check_tracing(cfg.tracing)
    check_email(cfg)
    _check_privacy(cfg)
    cfg.registration.terms = _check_terms(cfg.registration.terms)
    oauth_lifetime = cfg.oauth.access_token_lifetime_ms
    if type(oauth_lifetime) is not int or not 10_000 <= oauth_lifetime <= 86_400_000:
        raise ConfigError("oauth.access_token_lifetime_ms must be between 10000 (10 s) and 86400000 (a day)")
    transports = cfg.rtc.transports
    if not isinstance(transports, list) or not all(
        isinstance(t, dict) and isinstance(t.get("type"), str) for t in transports
    ):
        raise ConfigError("rtc.transports: a list of mappings, each with a type")
    if not isinstance(cfg.sticky_events.enabled, bool):
        raise ConfigError("sticky_events.enabled must be true or false")
    delayed = cfg.delayed_events
    for name in ("max_delay_ms", "max_per_user"):
        value = getattr(delayed, name)
        if type(value) is not int or not 0 < value < 2**53:
            raise ConfigError(f"delayed_events.{name} must be a positive whole number (under 2**53)")
    _check_oidc_providers(cfg, data.get("oidc_providers"))
    notices = cfg.server_notices.localpart
    if notices is not None and not (isinstance(notices, str) and LOCALPART_RE.fullmatch(notices)):
        raise ConfigError("server_notices.localpart must be a user ID localpart (a-z 0-9 . _ = / + -)")
    lifetime = cfg.sessions.refreshable_access_token_lifetime_ms
    if lifetime is not None and (type(lifetime) is not int or lifetime <= 0):
        raise ConfigError(
            "sessions.refreshable_access_token_lifetime_ms must be a positive whole number or null"
        )
    for where, ranges in (
        ("push.allowed_gateway_ranges", cfg.push.allowed_gateway_ranges),
        ("media.url_preview_allowed_ranges", cfg.media.url_preview_allowed_ranges),
        ("metrics_allow", cfg.metrics_allow),
    ):
        try:
            for cidr in ranges:
                ipaddress.ip_network(cidr, strict=False)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected a list of CIDR ranges ({e})") from None
    return cfg


def _check_privacy(cfg: Config) -> None:
    for name in ("room_directory", "user_directory", "profiles"):
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            if not isinstance(getattr(section, f.name), bool):
                raise ConfigError(f"{name}.{f.name} must be true or false")


def _check_tracing(tracing: TracingConfig) -> None:
    ratio = tracing.sample_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        raise ConfigError("tracing.sample_ratio must be a number from 0 to 1")
    tracing.sample_ratio = float(ratio)
    if not isinstance(tracing.endpoint, str) or not tracing.endpoint.startswith(("http://", "https://")):
        raise ConfigError("tracing.endpoint must be an http:// or https:// URL (OTLP/HTTP)")
    headers = tracing.headers
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError("tracing.headers: expected a mapping of header names to strings")
    if not isinstance(tracing.service_name, str) or not tracing.service_name:
        raise ConfigError("tracing.service_name must be a non-empty string")
    delay = tracing.export_delay_ms
    if type(delay) is not int or not 10 <= delay <= 600_000:
        raise ConfigError("tracing.export_delay_ms must be a whole number from 10 to 600000")


def _check_terms(raw: Any) -> TermsConfig | None:
    where = "registration.terms"
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {
        "version",
        "policies",
        "block_events_until_consent",
        "server_notice",
    }:
        raise ConfigError(
            f"{where}: expected a mapping of version and policies "
            "(and optionally block_events_until_consent and server_notice)"
        )
    block = raw.get("block_events_until_consent", False)
    if not isinstance(block, bool):
        raise ConfigError(f"{where}.block_events_until_consent must be true or false")
    notice = raw.get("server_notice")
    if notice is not None and (not isinstance(notice, str) or not notice.strip()):
        raise ConfigError(f"{where}.server_notice must be a non-empty string (the notice's text) or null")
    version, policies = raw.get("version"), raw.get("policies")
    if not isinstance(version, str) or not version:
        raise ConfigError(f'{where}.version is required, as a string (quoted: "1.0")')
    if not isinstance(policies, dict) or not policies:
        raise ConfigError(f"{where}.policies: expected a mapping of policy IDs (e.g. privacy_policy)")
    checked: dict[str, dict[str, dict[str, str]]] = {}
    for policy_id, languages in policies.items():
        at = f"{where}.policies.{policy_id}"
        if not isinstance(policy_id, str) or not policy_id:
            raise ConfigError(f"{where}.policies: {policy_id!r} is not a policy ID")
        if not isinstance(languages, dict) or not languages:
            raise ConfigError(f"{at}: expected a mapping of languages (e.g. en) to a name and url")
        checked[policy_id] = {}
        for language, doc in languages.items():
            if language == "version":
                raise ConfigError(f"{at}: the version is {where}.version, for every policy")
            if not isinstance(language, str) or not isinstance(doc, dict) or set(doc) - {"name", "url"}:
                raise ConfigError(f"{at}.{language}: expected a mapping of name and url")
            name, url = doc.get("name"), doc.get("url")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{at}.{language}.name is required (the document's title)")
            if not isinstance(url, str) or not re.fullmatch(r"https?://[^/?#\s]+\S*", url):
                raise ConfigError(f"{at}.{language}.url is required, as an http:// or https:// URL")
            checked[policy_id][language] = {"name": name, "url": url}
    return TermsConfig(version, checked, block_events_until_consent=block, server_notice=notice)


def _check_voip(voip: VoipConfig) -> None:
    if not isinstance(voip.turn_uris, list) or not all(isinstance(u, str) for u in voip.turn_uris):
        raise ConfigError("voip.turn_uris: expected a list of TURN URIs")
    if voip.turn_shared_secret is not None and (voip.turn_username or voip.turn_password):
        raise ConfigError("voip: set turn_shared_secret or turn_username/turn_password, not both")
    if not isinstance(voip.turn_user_lifetime_ms, int) or voip.turn_user_lifetime_ms <= 0:
        raise ConfigError("voip.turn_user_lifetime_ms must be a positive whole number")


def _check_oidc_providers(cfg: Config, raw: Any) -> None:
    from homeserver.handlers.oidc import check_provider

    if raw is None:
        cfg.oidc_providers = []
        return
    if not isinstance(raw, list):
        raise ConfigError("oidc_providers: expected a list of providers")
    providers: list[OidcProviderConfig] = []
    for i, entry in enumerate(raw):
        where = f"oidc_providers[{i}]"
        provider: OidcProviderConfig = _build(OidcProviderConfig, entry, where + ".")
        try:
            check_provider(provider)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        providers.append(provider)
    ids = [p.idp_id for p in providers]
    if len(set(ids)) != len(ids):
        raise ConfigError("oidc_providers: every provider needs its own idp_id")
    cfg.oidc_providers = providers


def _check_retention(retention: RetentionConfig) -> None:
    from homeserver.handlers.retention import RetentionSettings

    try:
        RetentionSettings.from_config(retention)
    except ValueError as e:
        raise ConfigError(f"retention: {e}") from None


def _check_media(media: MediaConfig) -> None:
    from homeserver.handlers.retention import parse_duration

    try:
        parse_duration(media.remote_media_lifetime, "remote_media_lifetime")
    except ValueError as e:
        raise ConfigError(f"media.{e}") from None


def _check_policy_server(cfg: Config) -> None:
    ps = cfg.policy_server
    for name in ("keywords", "blocked_users", "blocked_servers"):
        value = getattr(ps, name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"policy_server.{name}: expected a list of non-empty strings")
    if ps.enabled and not cfg.federation.enabled:
        raise ConfigError("policy_server.enabled needs federation.enabled: other servers ask over federation")


def _check_worker_peers(w: WorkersConfig) -> None:
    if w.peers is None:
        return
    if w.sockets is not None:
        raise ConfigError("workers: set sockets (one host) or peers (several hosts), not both")
    if not isinstance(w.peers, list) or len(w.peers) != w.count:
        raise ConfigError("workers.peers: one host:port per worker (workers.count of them)")
    for peer in w.peers:
        host, _, port = str(peer).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"workers.peers: {peer!r} is not host:port")
    if not isinstance(w.secret, str) or len(w.secret) < 32:
        raise ConfigError("workers.secret: with peers, a shared secret of at least 32 characters")


def _check_app_services(cfg: Config) -> None:
    """Read the registrations now, so that a bad one stops start-up with its reason."""
    from homeserver.appservice.registration import RegistrationError, load_registrations

    if not isinstance(cfg.app_services, list) or not all(isinstance(p, str) for p in cfg.app_services):
        raise ConfigError("app_services: expected a list of registration file paths")
    try:
        load_registrations(cfg.app_services, cfg.server_name, cfg.base_dir)
    except RegistrationError as e:
        raise ConfigError(str(e)) from None


def _check_support(support: SupportConfig) -> None:
    if not isinstance(support.contacts, list):
        raise ConfigError("support.contacts: expected a list")
    for contact in support.contacts:
        if not isinstance(contact, dict) or not isinstance(contact.get("role"), str):
            raise ConfigError("support.contacts: every contact needs a role")
        if not contact.get("matrix_id") and not contact.get("email_address"):
            raise ConfigError("support.contacts: every contact needs a matrix_id or an email_address")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found; run `sotto generate-config` first")
    data = yaml.safe_load(path.read_text()) or {}
    # Relative paths are relative to the directory holding config/ (the project root).
    base = path.resolve().parent
    if base.name == "config":
        base = base.parent
    return config_from_dict(data, str(base))
