"""Bot settings: one typed object, built in code or from `SOTTO_BOT_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from clients.trust import TrustMode, TrustPolicy

DEFAULT_STORE = "bot-store"


def _split(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class BotConfig:
    """Everything a Bot needs. Only `store_path` is required once `sotto-bot login` has run."""

    store_path: str = DEFAULT_STORE
    # Login: credentials in the store win; otherwise a token, otherwise a password.
    homeserver: str | None = None
    user_id: str | None = None
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    device_name: str = "sotto-bot"
    # Encryption and trust.
    encryption: bool = True
    cross_signing: bool = True
    keep_master_key: bool = False
    # Replace an identity the bot does not hold the keys of (login --reset-cross-signing).
    reset_cross_signing: bool = False
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    # Back up Megolm sessions to the homeserver (encrypted to a key only the bot's operator holds).
    key_backup: bool = False
    # Keep the private keys in the account's secret storage (SSSS) under a recovery key.
    secret_storage: bool = False
    # A recovery key to take those keys back with, into a new store (login --recovery-key-file).
    recovery_key: str | None = field(default=None, repr=False)
    pickle_key: str = field(default="DEFAULT_KEY", repr=False)
    # Behaviour.
    command_prefix: str = "!"
    # Who may invite the bot; glob patterns over user IDs. None: users of the bot's own server.
    allowed_inviters: tuple[str, ...] | None = None
    reject_disallowed_invites: bool = True
    # Handle events that arrived while the bot was offline (default: only new ones).
    process_missed_events: bool = False
    replies_as_notices: bool = True
    markdown: bool = True
    # Limits.
    sync_timeout_ms: int = 30_000
    max_concurrent_handlers: int = 32
    max_rate_limit_retries: int | None = 10
    max_download_bytes: int = 100 * 1024 * 1024
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    shutdown_grace_s: float = 10.0
    # Logging: bodies stay out of logs unless explicitly asked for (debugging a bot locally).
    log_message_bodies: bool = False

    def with_overrides(self, **changes: Any) -> BotConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> BotConfig:
        """SOTTO_BOT_STORE, _HOMESERVER, _USER, _PASSWORD, _TOKEN, _PREFIX, _INVITERS, _TRUST,
        _TRUSTED_USERS, _ENCRYPTION, _PICKLE_KEY, _SYNC_TIMEOUT_MS, _KEY_BACKUP,
        _SECRET_STORAGE; keyword overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "store_path": env.get("SOTTO_BOT_STORE"),
            "homeserver": env.get("SOTTO_BOT_HOMESERVER"),
            "user_id": env.get("SOTTO_BOT_USER"),
            "password": env.get("SOTTO_BOT_PASSWORD"),
            "access_token": env.get("SOTTO_BOT_TOKEN"),
            "command_prefix": env.get("SOTTO_BOT_PREFIX"),
            "allowed_inviters": _split(env.get("SOTTO_BOT_INVITERS")),
            "pickle_key": env.get("SOTTO_BOT_PICKLE_KEY"),
        }
        if "SOTTO_BOT_SYNC_TIMEOUT_MS" in env:
            values["sync_timeout_ms"] = int(env["SOTTO_BOT_SYNC_TIMEOUT_MS"])
        if "SOTTO_BOT_SECRET_STORAGE" in env:
            values["secret_storage"] = _bool(env["SOTTO_BOT_SECRET_STORAGE"])
        if "SOTTO_BOT_KEY_BACKUP" in env:
            values["key_backup"] = _bool(env["SOTTO_BOT_KEY_BACKUP"])
        if "SOTTO_BOT_ENCRYPTION" in env:
            values["encryption"] = _bool(env["SOTTO_BOT_ENCRYPTION"])
        if "SOTTO_BOT_TRUST" in env or "SOTTO_BOT_TRUSTED_USERS" in env:
            values["trust"] = TrustPolicy(
                mode=TrustMode(env.get("SOTTO_BOT_TRUST", "tofu")),
                trusted_users=_split(env.get("SOTTO_BOT_TRUSTED_USERS")) or (),
            )
        values.update(overrides)
        return cls().with_overrides(**values)
