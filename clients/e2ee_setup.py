"""The bot's long-lived E2EE identity, set up in order when it connects.

1. With a recovery key and an empty store: take the private keys back from secret storage.
2. Cross-signing: bootstrap (or re-sign a new device) — `crosssigning.py`.
3. Key backup of Megolm sessions, if enabled — `backup.py`.
4. Secret storage of the private keys, if enabled — `secrets.py`.
After each sync, new Megolm sessions go to the backup.
"""

from __future__ import annotations

import logging

from clients.backup import KeyBackup, KeyBackupError
from clients.client import SottoAsyncClient
from clients.config import BotConfig
from clients.crosssigning import (
    CrossSigning,
    CrossSigningError,
    keys_from_secrets,
    load_keys,
    query_identity,
    save_keys,
)
from clients.recovery import encode_recovery_key
from clients.secrets import (
    MASTER,
    MEGOLM_BACKUP,
    SELF_SIGNING,
    USER_SIGNING,
    SecretStorage,
    SecretStorageError,
    fetch_bot_secrets,
)
from clients.store import StoreDir

log = logging.getLogger(__name__)


class E2EESetupError(Exception):
    """The identity could not be set up as configured (a wrong recovery key, say)."""


class E2EESetup:
    def __init__(self, client: SottoAsyncClient, store: StoreDir, config: BotConfig) -> None:
        self.client = client
        self.store = store
        self.config = config
        self.cross_signing: CrossSigning | None = None
        self.backup: KeyBackup | None = None
        self.secret_storage: SecretStorage | None = None

    async def run(self) -> None:
        cfg = self.config
        if cfg.recovery_key:
            await self._restore_from_secret_storage(cfg.recovery_key)
        master_seed = None
        if cfg.cross_signing:
            master_seed = await self._bootstrap_cross_signing(reset=cfg.reset_cross_signing)
        if cfg.key_backup:
            await self._enable_key_backup()
        if cfg.secret_storage:
            await self._save_to_secret_storage(master_seed)

    async def after_sync(self) -> None:
        if self.backup is not None and self.backup.version is not None:
            try:
                await self.backup.upload_new()
            except KeyBackupError as exc:
                log.warning("key backup upload failed: %s", exc)

    async def _bootstrap_cross_signing(self, reset: bool = False) -> bytes | None:
        """Set up cross-signing; returns the master private key if it was just created."""
        client = self.client
        self.cross_signing = CrossSigning(
            client, self.store, password=self.config.password, keep_master_key=self.config.keep_master_key
        )
        try:
            result = await self.cross_signing.bootstrap(reset=reset)
        except CrossSigningError as exc:
            log.warning("cross-signing not set up: %s", exc)
            return None
        log.info("cross-signing ready (master key %s)", result.master_public)
        return result.new_master_seed

    async def _restore_from_secret_storage(self, recovery_key: str) -> None:
        """A new store for an existing bot: take its private keys back from secret storage."""
        client = self.client
        self.secret_storage = SecretStorage(client, self.store)
        try:
            await self.secret_storage.unlock(recovery_key)
            found = await fetch_bot_secrets(self.secret_storage)
            if SELF_SIGNING in found and USER_SIGNING in found and load_keys(self.store) is None:
                server = await query_identity(client, str(client.user_id))
                keys = keys_from_secrets(server, found[SELF_SIGNING], found[USER_SIGNING], found.get(MASTER))
                save_keys(self.store, keys, self.config.keep_master_key)
                log.info("cross-signing keys restored from secret storage")
            if MEGOLM_BACKUP in found:
                backup = KeyBackup(client, self.store)
                count = await backup.restore(encode_recovery_key(found[MEGOLM_BACKUP]))
                log.info("restored %d Megolm sessions via secret storage", count)
        except (SecretStorageError, CrossSigningError, KeyBackupError) as exc:
            raise E2EESetupError(f"restoring from secret storage failed: {exc}") from None

    async def _save_to_secret_storage(self, master_seed: bytes | None) -> None:
        client = self.client
        storage = self.secret_storage or SecretStorage(client, self.store)
        keys = self.cross_signing.keys if self.cross_signing else None
        try:
            await storage.ensure_key()
            written = await storage.store_changed(
                {
                    MASTER: master_seed or (keys.master_seed if keys else None),
                    SELF_SIGNING: keys.self_signing_seed if keys else None,
                    USER_SIGNING: keys.user_signing_seed if keys else None,
                    MEGOLM_BACKUP: self.backup.private_key if self.backup else None,
                }
            )
        except SecretStorageError as exc:
            log.warning("secret storage not updated: %s", exc)
            return
        self.secret_storage = storage
        if written:
            log.info("stored %s in secret storage", ", ".join(written))

    async def _enable_key_backup(self) -> None:
        self.backup = KeyBackup(self.client, self.store)
        try:
            version = await self.backup.enable()
        except KeyBackupError as exc:
            log.warning("key backup not enabled: %s", exc)
            self.backup = None
            return
        log.info("backing up Megolm sessions to key backup version %s", version)

    async def restore_key_backup(self, recovery_key: str) -> int:
        """Import the sessions of the account's key backup (after losing the store, say)."""
        client = self.client
        backup = self.backup or KeyBackup(client, self.store)
        count = await backup.restore(recovery_key)
        if self.config.key_backup:
            self.backup = backup
        return count
