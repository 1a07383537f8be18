"""The `email` section of the configuration: SMTP, validation links, notification emails
(see config/README.md, `email`). Checked by homeserver.config when the file is loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from homeserver.config_errors import ConfigError

if TYPE_CHECKING:
    from homeserver.config import Config


@dataclass(slots=True)
class EmailConfig:
    """Email (off by default): addresses on accounts, and password resets by email. The
    server sends validation links through this SMTP server."""

    enabled: bool = False
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_pass: str | None = None
    # A file holding the SMTP password (instead of smtp_pass).
    smtp_pass_file: str | None = None
    # TLS from the first byte (SMTPS, usually port 465).
    force_tls: bool = False
    # Refuse to send unless the server offers STARTTLS.
    require_transport_security: bool = False
    # Use STARTTLS when the server offers it.
    enable_tls: bool = True
    # The sender, e.g. "Example Matrix <noreply@example.org>".
    notif_from: str = ""
    # The name emails use for the service.
    app_name: str = "Matrix"
    # How long a validation link works, and a validated session may be used.
    validation_token_lifetime_ms: int = 3_600_000
    # Email notifications (Synapse's email pusher): users' pushers of kind "email" get a
    # summary of notifications still unread `notif_delay_ms` after they arrived, at most one
    # email per `notif_throttle_ms` per user. Off: such pushers are stored, nothing is sent.
    enable_notifs: bool = False
    notif_delay_ms: int = 600_000
    notif_throttle_ms: int = 3_600_000
    # With enable_notifs: an address validated at registration gets an email pusher (on, as
    # Synapse's default).
    notif_for_new_users: bool = True
    # Where the emails' links open rooms (Synapse's `client_base_url`).
    client_base_url: str = "https://app.element.io"
    # The hosts a requestToken's `next_link` may lead to (Synapse's
    # `next_link_domain_whitelist`); None: any http(s) host.
    next_link_domain_whitelist: list[str] | None = None
    # Which addresses may be registered or added to accounts: regular expressions, one of
    # which the whole (lower-cased) address must match (Synapse's `allowed_local_3pids` for
    # email); None: any. Password resets and the admin API are not limited by it.
    allowed_addresses: list[str] | None = None


def check_email(cfg: Config) -> None:
    """The `email` section, and the registration options that depend on it."""
    email = cfg.email
    flags = ("enabled", "force_tls", "require_transport_security", "enable_tls", "enable_notifs")
    for name in (*flags, "notif_for_new_users"):
        if not isinstance(getattr(email, name), bool):
            raise ConfigError(f"email.{name} must be true or false")
    for name in ("notif_delay_ms", "notif_throttle_ms"):
        value = getattr(email, name)
        if type(value) is not int or not 0 <= value <= 7 * 86_400_000:
            raise ConfigError(f"email.{name} must be milliseconds, from 0 to a week")
    base = email.client_base_url
    if not isinstance(base, str) or not base.startswith(("https://", "http://")):
        raise ConfigError("email.client_base_url must be an http(s) URL")
    email.client_base_url = base.rstrip("/")
    patterns = email.allowed_addresses
    if patterns is not None:
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError("email.allowed_addresses must be a list of regular expressions")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"email.allowed_addresses: {pattern!r} is not a regular expression ({e})"
                ) from None
    hosts = email.next_link_domain_whitelist
    if hosts is not None:
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            raise ConfigError("email.next_link_domain_whitelist must be a list of host names")
        email.next_link_domain_whitelist = [h.lower() for h in hosts]  # as urlsplit gives them
    if email.enable_notifs and not email.enabled:
        raise ConfigError("email.enable_notifs needs email.enabled (the SMTP server and notif_from)")
    port, lifetime = email.smtp_port, email.validation_token_lifetime_ms
    if type(port) is not int or not 0 < port < 65536:
        raise ConfigError("email.smtp_port must be a port number")
    if type(lifetime) is not int or not 60_000 <= lifetime <= 7 * 86_400_000:
        raise ConfigError("email.validation_token_lifetime_ms must be from 60000 (a minute) to a week")
    for name in ("smtp_host", "notif_from", "app_name"):
        if not isinstance(getattr(email, name), str):
            raise ConfigError(f"email.{name} must be a string")
    for name in ("smtp_user", "smtp_pass", "smtp_pass_file"):
        if getattr(email, name) is not None and not isinstance(getattr(email, name), str):
            raise ConfigError(f"email.{name} must be a string")
    if email.smtp_pass is not None and email.smtp_pass_file is not None:
        raise ConfigError("email: set smtp_pass or smtp_pass_file, not both")
    require_email = cfg.registration.require_email
    if not isinstance(require_email, bool):
        raise ConfigError("registration.require_email must be true or false")
    if require_email and not email.enabled:
        raise ConfigError(
            "registration.require_email needs email.enabled: new accounts prove their address "
            "through an email this server sends"
        )
    if email.force_tls and email.require_transport_security:
        raise ConfigError(
            "email: set force_tls (TLS from the start) or require_transport_security (STARTTLS)"
        )
    if not email.enabled:
        return
    if not email.smtp_host:
        raise ConfigError("email.smtp_host is required when email is enabled")
    if cfg.public_baseurl is None and cfg.listener.bind_address in ("0.0.0.0", "::", ""):
        # The links in emails would name the wildcard address, which reaches nobody.
        raise ConfigError(
            "email needs public_baseurl (e.g. https://matrix.example.org): emails carry links to this server"
        )
    if "@" not in email.notif_from:
        raise ConfigError(
            'email.notif_from is required when email is enabled, e.g. "Example <noreply@example.org>"'
        )
    if email.smtp_pass_file is not None:
        path = cfg.resolve_path(email.smtp_pass_file)
        try:
            with open(path) as f:
                email.smtp_pass = f.readline().strip()  # the first line, as documented
        except OSError as e:
            raise ConfigError(f"email.smtp_pass_file: cannot read {path} ({e.strerror})") from None
