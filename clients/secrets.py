"""Secret storage (SSSS, `m.secret_storage.v1.aes-hmac-sha2`) for the bot's private keys.

Optional (`secret_storage=True`). The bot's cross-signing private keys and its key-backup key are
stored encrypted in its account data, under one secret-storage key whose recovery key the
operator keeps. After losing the store, `sotto-bot login --recovery-key-file F` gets them back:
the new device is signed by the same identity and the backup can be restored, so peers see no
identity change.

Crypto (spec "Secrets"): per secret, HKDF-SHA-256(key, salt = 32 zero bytes, info = secret name)
gives an AES-256 key and an HMAC key; the secret is AES-CTR encrypted under a random IV (bit 63
cleared) and the ciphertext authenticated with HMAC-SHA-256. Primitives come from
`cryptography`; the tests check this module against test vectors from mautrix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import string
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from unpaddedbase64 import encode_base64

from clients.client import SottoAsyncClient
from clients.recovery import RecoveryKeyError, decode_recovery_key, encode_recovery_key
from clients.store import StoreDir

log = logging.getLogger(__name__)

ALGORITHM = "m.secret_storage.v1.aes-hmac-sha2"
DEFAULT_KEY = "m.secret_storage.default_key"
MASTER = "m.cross_signing.master"
SELF_SIGNING = "m.cross_signing.self_signing"
USER_SIGNING = "m.cross_signing.user_signing"
MEGOLM_BACKUP = "m.megolm_backup.v1"
SECRET_STORAGE_FILE = "secret_storage.json"


class SecretStorageError(Exception):
    pass


def b64decode_any(text: str) -> bytes:
    """Standard base64, padded or not (the spec asks clients to accept both)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def b64encode_secret(data: bytes) -> str:
    """Binary secrets (private keys) are stored as standard base64 of the raw key."""
    return base64.b64encode(data).decode()


def _derive(key: bytes, info: str) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=bytes(32), info=info.encode()).derive(key)
    return okm[:32], okm[32:]


def _mac(mac_key: bytes, data: bytes) -> bytes:
    h = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def _ctr(aes_key: bytes, iv: bytes, data: bytes) -> bytes:
    cipher = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).encryptor()
    return cipher.update(data) + cipher.finalize()


def _new_iv() -> bytes:
    iv = bytearray(os.urandom(16))
    iv[8] &= 0x7F  # bit 63 cleared: AES-CTR implementations disagree on counter overflow
    return bytes(iv)


def encrypt_secret(key: bytes, name: str, secret: str, iv: bytes | None = None) -> dict[str, str]:
    aes_key, mac_key = _derive(key, name)
    iv = iv or _new_iv()
    ciphertext = _ctr(aes_key, iv, secret.encode())
    return {
        "iv": encode_base64(iv),
        "ciphertext": encode_base64(ciphertext),
        "mac": encode_base64(_mac(mac_key, ciphertext)),
    }


def decrypt_secret(key: bytes, name: str, data: dict[str, Any]) -> str:
    aes_key, mac_key = _derive(key, name)
    try:
        iv, ciphertext, mac = (b64decode_any(str(data[k])) for k in ("iv", "ciphertext", "mac"))
    except (KeyError, ValueError) as exc:
        raise SecretStorageError(f"malformed secret {name}") from exc
    if not hmac.compare_digest(_mac(mac_key, ciphertext), mac):
        raise SecretStorageError(f"secret {name}: wrong key or tampered data (MAC mismatch)")
    return _ctr(aes_key, iv, ciphertext).decode()


def key_description(key: bytes, name: str = "m.default") -> dict[str, Any]:
    """A key's account-data description, with the iv/mac that let a client check the key."""
    check = encrypt_secret(key, "", "\0" * 32)
    return {"name": name, "algorithm": ALGORITHM, "iv": check["iv"], "mac": check["mac"]}


def key_matches(key: bytes, description: dict[str, Any]) -> bool:
    if description.get("algorithm") != ALGORITHM:
        return False
    if "iv" not in description or "mac" not in description:
        return True  # optional: without them every key is assumed valid
    try:
        iv = b64decode_any(str(description["iv"]))
        expected = b64decode_any(str(description["mac"]))
    except ValueError:
        return False
    aes_key, mac_key = _derive(key, "")
    return hmac.compare_digest(_mac(mac_key, _ctr(aes_key, iv, bytes(32))), expected)


class SecretStorage:
    """The account's secret storage, with the bot's default key once unlocked or created."""

    def __init__(self, client: SottoAsyncClient, store: StoreDir) -> None:
        self.client = client
        self.store = store
        data = store.read_json(SECRET_STORAGE_FILE) or {}
        self.key_id: str | None = data.get("key_id")
        self.key: bytes | None = b64decode_any(data["key"]) if data.get("key") else None
        # secret name → fingerprint of the value last stored, so unchanged secrets are not rewritten.
        self.stored: dict[str, str] = dict(data.get("stored", {}))

    @property
    def recovery_key(self) -> str | None:
        return encode_recovery_key(self.key) if self.key else None

    def _save(self) -> None:
        assert self.key is not None
        self.store.write_json(
            SECRET_STORAGE_FILE,
            {"key_id": self.key_id, "key": b64encode_secret(self.key), "stored": self.stored},
        )

    def _path(self, event_type: str) -> str:
        return (
            f"/v3/user/{quote(str(self.client.user_id), safe='')}/account_data/{quote(event_type, safe='')}"
        )

    async def get(self, event_type: str) -> dict[str, Any] | None:
        resp = await self.client.request_json("GET", self._path(event_type))
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise SecretStorageError(f"reading {event_type}: HTTP {resp.status}")
        return resp.body

    async def put(self, event_type: str, content: dict[str, Any]) -> None:
        resp = await self.client.request_json("PUT", self._path(event_type), content)
        if resp.status != 200:
            raise SecretStorageError(f"writing {event_type}: HTTP {resp.status}")

    async def ensure_key(self) -> bool:
        """Have a usable default key: ours, or a new one if the account has none. True if created."""
        default = await self.get(DEFAULT_KEY)
        default_id = default.get("key") if default else None
        if self.key is not None and default_id == self.key_id:
            return False
        if default_id is not None:
            raise SecretStorageError(
                "the account already has secret storage; log in with its recovery key (--recovery-key-file)"
            )
        alphabet = string.ascii_letters + string.digits
        self.key_id = "".join(secrets.choice(alphabet) for _ in range(32))
        self.key = os.urandom(32)
        self.stored = {}
        await self.put(f"m.secret_storage.key.{self.key_id}", key_description(self.key))
        await self.put(DEFAULT_KEY, {"key": self.key_id})
        self._save()
        log.info("created secret storage key %s", self.key_id)
        return True

    async def unlock(self, recovery_key: str) -> None:
        """Take the account's default key from its recovery key, checking it against the description."""
        try:
            key = decode_recovery_key(recovery_key)
        except RecoveryKeyError as exc:
            raise SecretStorageError(str(exc)) from None
        default = await self.get(DEFAULT_KEY)
        key_id = default.get("key") if default else None
        if not isinstance(key_id, str):
            raise SecretStorageError("the account has no secret storage")
        description = await self.get(f"m.secret_storage.key.{key_id}")
        if description is None or not key_matches(key, description):
            raise SecretStorageError("the recovery key does not unlock this account's secret storage")
        if key_id != self.key_id:
            self.stored = {}
        self.key_id, self.key = key_id, key
        self._save()

    async def store_secret(self, name: str, secret: str) -> None:
        if self.key is None or self.key_id is None:
            raise SecretStorageError("secret storage is locked")
        await self.put(name, {"encrypted": {self.key_id: encrypt_secret(self.key, name, secret)}})

    async def store_changed(self, values: dict[str, bytes | None]) -> list[str]:
        """Store binary secrets whose value differs from what we stored last; returns their names."""
        written = []
        for name, value in values.items():
            if value is None:
                continue
            fingerprint = hashlib.sha256(value).hexdigest()
            if self.stored.get(name) == fingerprint:
                continue
            await self.store_secret(name, b64encode_secret(value))
            self.stored[name] = fingerprint
            written.append(name)
        if written:
            self._save()
        return written

    async def fetch_secret(self, name: str) -> str | None:
        if self.key is None or self.key_id is None:
            raise SecretStorageError("secret storage is locked")
        content = await self.get(name)
        encrypted = (content or {}).get("encrypted", {}).get(self.key_id)
        if not isinstance(encrypted, dict):
            return None
        return decrypt_secret(self.key, name, encrypted)


# -- what the bot keeps there -------------------------------------------------------------------


async def fetch_bot_secrets(storage: SecretStorage) -> dict[str, bytes]:
    """The bot's private keys found in secret storage, by secret name."""
    found = {}
    for name in (MASTER, SELF_SIGNING, USER_SIGNING, MEGOLM_BACKUP):
        value = await storage.fetch_secret(name)
        if value is not None:
            try:
                found[name] = b64decode_any(value)
            except ValueError:
                log.warning("secret %s is not base64; ignored", name)
    return found
