"""Server-side key backup of the bot's Megolm sessions (`m.megolm_backup.v1.curve25519-aes-sha2`).

Optional (`key_backup=True`). The bot creates a backup version whose Curve25519 public key is
signed by its device, then uploads every inbound Megolm session it holds, each encrypted to that
key (vodozemac's libolm-compatible `PkEncryption`; the homeserver sees only ciphertext). If the
store is lost, a new login plus the recovery key restores the sessions, so old messages decrypt.

The private key is kept in the store (`key_backup.json`, 0600) and shown once, as a spec-format
recovery key (base58 of 0x8B 0x01 ‖ key ‖ parity), for the operator to keep elsewhere.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import vodozemac
from nio.crypto.sessions import InboundGroupSession
from unpaddedbase64 import decode_base64, encode_base64

from clients.client import SottoAsyncClient
from clients.crosssigning import signing_payload
from clients.recovery import RecoveryKeyError, decode_recovery_key, encode_recovery_key
from clients.store import StoreDir

log = logging.getLogger(__name__)

ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
BACKUP_FILE = "key_backup.json"
UPLOAD_BATCH = 200


class KeyBackupError(Exception):
    pass


__all__ = ["KeyBackup", "KeyBackupError", "RecoveryKeyError", "decode_recovery_key", "encode_recovery_key"]


# -- the backup ---------------------------------------------------------------------------------


class KeyBackup:
    def __init__(self, client: SottoAsyncClient, store: StoreDir) -> None:
        self.client = client
        self.store = store
        data = store.read_json(BACKUP_FILE) or {}
        self.version: str | None = data.get("version")
        self.private_key: bytes | None = (
            decode_base64(data["private_key"]) if data.get("private_key") else None
        )
        # session_id → first known index already uploaded (a better copy is re-uploaded).
        self.backed_up: dict[str, int] = dict(data.get("backed_up", {}))

    @staticmethod
    def stored_recovery_key(store: StoreDir) -> str | None:
        data = store.read_json(BACKUP_FILE) or {}
        return encode_recovery_key(decode_base64(data["private_key"])) if data.get("private_key") else None

    @property
    def recovery_key(self) -> str | None:
        return encode_recovery_key(self.private_key) if self.private_key else None

    def _save(self) -> None:
        self.store.write_json(
            BACKUP_FILE,
            {
                "version": self.version,
                "private_key": encode_base64(self.private_key) if self.private_key else None,
                "backed_up": self.backed_up,
            },
        )

    def _public_key(self) -> str:
        assert self.private_key is not None
        secret = vodozemac.Curve25519SecretKey.from_bytes(self.private_key)
        return str(secret.public_key().to_base64())

    async def current_version(self) -> dict[str, Any] | None:
        resp = await self.client.request_json("GET", "/v3/room_keys/version")
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise KeyBackupError(f"GET room_keys/version: HTTP {resp.status}")
        return resp.body

    async def enable(self) -> str:
        """Use our backup version if it is still the server's current one; create one if there is none."""
        current = await self.current_version()
        if (
            current is not None
            and self.private_key is not None
            and current.get("algorithm") == ALGORITHM
            and current.get("auth_data", {}).get("public_key") == self._public_key()
        ):
            self.version = str(current["version"])
            self._save()
            return self.version
        if current is not None:
            # Someone's backup (ours from a lost store, or the account owner's): never replace it.
            raise KeyBackupError(
                "the account already has a key backup this store has no key for; "
                "restore it with `sotto-bot backup restore` (or delete it to start a new one)"
            )
        if self.private_key is None:
            self.private_key = bytes(vodozemac.Curve25519SecretKey().to_bytes())
        auth_data: dict[str, Any] = {"public_key": self._public_key()}
        if self.client.olm:
            signature = self.client.olm.account.sign(signing_payload(auth_data).decode())
            auth_data["signatures"] = {self.client.user_id: {f"ed25519:{self.client.device_id}": signature}}
        resp = await self.client.request_json(
            "POST", "/v3/room_keys/version", {"algorithm": ALGORITHM, "auth_data": auth_data}
        )
        if resp.status != 200:
            raise KeyBackupError(f"creating a backup version failed: HTTP {resp.status}")
        self.version = str(resp.body["version"])
        self.backed_up = {}
        self._save()
        log.info("created key backup version %s", self.version)
        return self.version

    def _pending(self) -> list[InboundGroupSession]:
        if not self.client.olm:
            return []
        return [
            s
            for s in self.client.olm.inbound_group_store
            if s.id not in self.backed_up or s.first_known_index < self.backed_up[s.id]
        ]

    def _encrypt(self, session: InboundGroupSession) -> dict[str, Any]:
        index = session.first_known_index
        plaintext = {
            "algorithm": "m.megolm.v1.aes-sha2",
            "forwarding_curve25519_key_chain": list(session.forwarding_chain),
            "sender_claimed_keys": {"ed25519": session.ed25519},
            "sender_key": session.sender_key,
            "session_key": session.export_session(index),
        }
        encryption = vodozemac.PkEncryption.from_key(
            vodozemac.Curve25519PublicKey.from_base64(self._public_key())
        )
        message = encryption.encrypt(json.dumps(plaintext).encode())
        return {
            "first_message_index": index,
            "forwarded_count": len(session.forwarding_chain),
            "is_verified": False,
            "session_data": {
                "ephemeral": encode_base64(bytes(message.ephemeral_key)),
                "ciphertext": encode_base64(bytes(message.ciphertext)),
                "mac": encode_base64(bytes(message.mac)),
            },
        }

    async def upload_new(self) -> int:
        """Back up sessions not backed up yet; returns how many were uploaded."""
        if self.version is None:
            return 0
        pending = self._pending()
        for start in range(0, len(pending), UPLOAD_BATCH):
            batch = pending[start : start + UPLOAD_BATCH]
            rooms: dict[str, Any] = {}
            for session in batch:
                rooms.setdefault(session.room_id, {"sessions": {}})["sessions"][session.id] = self._encrypt(
                    session
                )
            resp = await self.client.request_json(
                "PUT", f"/v3/room_keys/keys?version={quote(self.version)}", {"rooms": rooms}
            )
            if resp.status != 200:
                if resp.body.get("errcode") == "M_WRONG_ROOM_KEYS_VERSION":
                    log.warning("the key backup version changed on the server; backups paused")
                    self.version = None
                raise KeyBackupError(f"uploading room keys failed: HTTP {resp.status}")
            for session in batch:
                self.backed_up[session.id] = session.first_known_index
            self._save()
        if pending:
            log.info("backed up %d Megolm sessions", len(pending))
        return len(pending)

    async def restore(self, recovery_key: str) -> int:
        """Import every session of the server's current backup; returns how many were new."""
        try:
            private_key = decode_recovery_key(recovery_key)
        except RecoveryKeyError as exc:
            raise KeyBackupError(str(exc)) from None
        current = await self.current_version()
        if current is None:
            raise KeyBackupError("the account has no key backup")
        secret = vodozemac.Curve25519SecretKey.from_bytes(private_key)
        if current.get("auth_data", {}).get("public_key") != secret.public_key().to_base64():
            raise KeyBackupError("the recovery key does not belong to the current key backup")
        version = str(current["version"])
        resp = await self.client.request_json("GET", f"/v3/room_keys/keys?version={quote(version)}")
        if resp.status != 200:
            raise KeyBackupError(f"downloading room keys failed: HTTP {resp.status}")
        decryption = vodozemac.PkDecryption.from_key(secret)
        imported = 0
        assert self.client.olm is not None
        for room_id, room in resp.body.get("rooms", {}).items():
            for session_id, data in room.get("sessions", {}).items():
                try:
                    session = self._decrypt(decryption, room_id, data["session_data"])
                except (KeyError, ValueError, TypeError, vodozemac.PkDecodeException) as exc:
                    log.warning("skipping backed-up session %s: %s", session_id, type(exc).__name__)
                    continue
                if self.client.olm.inbound_group_store.add(session):
                    self.client.store.save_inbound_group_session(session)
                    imported += 1
                self.backed_up[session.id] = session.first_known_index  # already in this backup
        self.private_key, self.version = private_key, version
        self._save()
        log.info("restored %d Megolm sessions from key backup version %s", imported, version)
        return imported

    @staticmethod
    def _decrypt(decryption: Any, room_id: str, data: dict[str, Any]) -> InboundGroupSession:
        message = vodozemac.Message.from_base64(data["ciphertext"], data["mac"], data["ephemeral"])
        plain = json.loads(bytes(decryption.decrypt(message)))
        return InboundGroupSession.import_session(
            plain["session_key"],
            plain["sender_claimed_keys"]["ed25519"],
            plain["sender_key"],
            room_id,
            plain.get("forwarding_curve25519_key_chain", []),
        )
