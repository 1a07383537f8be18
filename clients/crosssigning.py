"""Cross-signing for the bot (matrix-nio has none): key generation, signing, bootstrap.

The bot owns three Ed25519 key pairs (spec: end-to-end encryption → cross-signing): the master
key (its identity), the self-signing key (signs the bot's own devices) and the user-signing key
(signs other users' master keys after verification). Bootstrapping uploads all three through
`/keys/device_signing/upload` (behind user-interactive auth when the server requires it: the
bot's password, or, for a bot logged in through OAuth, the `m.oauth` stage: the operator approves
in a browser at the URL the bot logs, and the bot retries until it may) and signs the bot's
current device through `/keys/signatures/upload`, so clients that refuse messages from
non-cross-signed devices (Element, MSC4153) talk to the bot.

Crypto: Ed25519 from libsodium through PyNaCl (already a runtime dependency, constant-time, and
the library Synapse signs with); signed JSON is canonical JSON from `canonicaljson`. Tests check
the keys and signatures against python-olm's independent `PkSigning`.

Key custody: the self-signing and user-signing seeds are kept in the store (0600). The spec says
a client without secure storage must not keep the master private key, so by default it is used
during bootstrap and then discarded (`keep_master_key=True` keeps it). Without it the bot can still
sign its own new devices; replacing the other two keys then means a new identity (`reset`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from canonicaljson import encode_canonical_json
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from clients.client import SottoAsyncClient
from clients.store import CROSS_SIGNING_FILE, StoreDir

log = logging.getLogger(__name__)

SEED_BYTES = 32
OAUTH_STAGE = "m.oauth"
# While the operator approves in a browser (the `m.oauth` stage), the request is retried this
# often, for as long as the server keeps an approval (Sotto: ten minutes).
APPROVAL_POLL_S = 2.0
APPROVAL_WAIT_S = 600.0


class CrossSigningError(Exception):
    """Bootstrap could not complete; the message says why (never contains secrets)."""


# -- primitives -------------------------------------------------------------------------------


def public_key(seed: bytes) -> str:
    """The unpadded-base64 Ed25519 public key for a 32-byte seed."""
    return encode_base64(bytes(SigningKey(seed).verify_key))


def signing_payload(obj: dict[str, Any]) -> bytes:
    """What a signature covers: canonical JSON without `signatures` and `unsigned`."""
    stripped = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return bytes(encode_canonical_json(stripped))


def sign_json(obj: dict[str, Any], seed: bytes, user_id: str, key_id: str) -> dict[str, Any]:
    """A copy of `obj` with an added signature `user_id → key_id → sig`."""
    signature = SigningKey(seed).sign(signing_payload(obj)).signature
    signed = copy.deepcopy(obj)
    signed.setdefault("signatures", {}).setdefault(user_id, {})[key_id] = encode_base64(signature)
    return signed


def verify_signature(obj: dict[str, Any], user_id: str, key_id: str, public: str) -> bool:
    try:
        sig = decode_base64(obj["signatures"][user_id][key_id])
        VerifyKey(decode_base64(public)).verify(signing_payload(obj), sig)
    except (KeyError, TypeError, ValueError, BadSignatureError):
        return False
    return True


def key_object(user_id: str, usage: str, public: str) -> dict[str, Any]:
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}}


def only_key(obj: dict[str, Any] | None) -> str | None:
    """The public key of a cross-signing key object (they hold exactly one)."""
    if not obj or not isinstance(obj.get("keys"), dict) or len(obj["keys"]) != 1:
        return None
    value = next(iter(obj["keys"].values()))
    return value if isinstance(value, str) else None


# -- the bot's keys ---------------------------------------------------------------------------


@dataclass(slots=True)
class CrossSigningKeys:
    master_public: str
    self_signing_seed: bytes
    user_signing_seed: bytes
    master_seed: bytes | None = None
    # The signed public objects as uploaded, so they can be re-uploaded without the master seed.
    uploaded: dict[str, Any] | None = None

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        master = os.urandom(SEED_BYTES)
        return cls(public_key(master), os.urandom(SEED_BYTES), os.urandom(SEED_BYTES), master)

    @property
    def self_signing_public(self) -> str:
        return public_key(self.self_signing_seed)

    @property
    def user_signing_public(self) -> str:
        return public_key(self.user_signing_seed)

    def upload_body(self, user_id: str) -> dict[str, Any]:
        """Signed master, self-signing and user-signing key objects for device_signing/upload."""
        if self.uploaded is not None:
            return copy.deepcopy(self.uploaded)
        if self.master_seed is None:
            raise CrossSigningError("the master private key is needed to sign new cross-signing keys")
        master_id = f"ed25519:{self.master_public}"
        body = {
            "master_key": key_object(user_id, "master", self.master_public),
            "self_signing_key": sign_json(
                key_object(user_id, "self_signing", self.self_signing_public),
                self.master_seed,
                user_id,
                master_id,
            ),
            "user_signing_key": sign_json(
                key_object(user_id, "user_signing", self.user_signing_public),
                self.master_seed,
                user_id,
                master_id,
            ),
        }
        return body

    def to_json(self, keep_master: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "master_public": self.master_public,
            "self_signing_seed": encode_base64(self.self_signing_seed),
            "user_signing_seed": encode_base64(self.user_signing_seed),
        }
        if keep_master and self.master_seed is not None:
            data["master_seed"] = encode_base64(self.master_seed)
        if self.uploaded is not None:
            data["uploaded"] = self.uploaded
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CrossSigningKeys:
        master_seed = data.get("master_seed")
        keys = cls(
            master_public=str(data["master_public"]),
            self_signing_seed=decode_base64(data["self_signing_seed"]),
            user_signing_seed=decode_base64(data["user_signing_seed"]),
            master_seed=decode_base64(master_seed) if master_seed else None,
            uploaded=data.get("uploaded"),
        )
        if keys.master_seed is not None and public_key(keys.master_seed) != keys.master_public:
            raise CrossSigningError("stored master key does not match its public key")
        return keys


def keys_from_secrets(
    server: UserIdentity, self_signing_seed: bytes, user_signing_seed: bytes, master_seed: bytes | None
) -> CrossSigningKeys:
    """Local keys rebuilt from secret storage, checked against the identity the server publishes."""
    if server.master_public is None:
        raise CrossSigningError("the account publishes no cross-signing identity")
    if public_key(self_signing_seed) != server.self_signing_public:
        raise CrossSigningError("the stored self-signing key is not the account's current one")
    if master_seed is not None and public_key(master_seed) != server.master_public:
        master_seed = None
    return CrossSigningKeys(server.master_public, self_signing_seed, user_signing_seed, master_seed)


def load_keys(store: StoreDir) -> CrossSigningKeys | None:
    data = store.read_json(CROSS_SIGNING_FILE)
    return CrossSigningKeys.from_json(data) if data else None


def save_keys(store: StoreDir, keys: CrossSigningKeys, keep_master: bool) -> None:
    store.write_json(CROSS_SIGNING_FILE, keys.to_json(keep_master))


# -- talking to the homeserver ----------------------------------------------------------------


@dataclass(slots=True)
class UserIdentity:
    """What /keys/query says about one user's cross-signing keys and devices."""

    master_key: dict[str, Any] | None
    self_signing_key: dict[str, Any] | None
    user_signing_key: dict[str, Any] | None
    devices: dict[str, dict[str, Any]]

    @property
    def master_public(self) -> str | None:
        return only_key(self.master_key)

    @property
    def self_signing_public(self) -> str | None:
        return only_key(self.self_signing_key)

    def device_cross_signed(self, device_id: str) -> bool:
        """Is the device signed by a self-signing key that the master key signed?"""
        master, ssk = self.master_public, self.self_signing_public
        device = self.devices.get(device_id)
        if not (master and ssk and device and self.self_signing_key):
            return False
        user_id = str(device.get("user_id", ""))
        return verify_signature(self.self_signing_key, user_id, f"ed25519:{master}", master) and (
            verify_signature(device, user_id, f"ed25519:{ssk}", ssk)
        )


async def query_identity(client: SottoAsyncClient, user_id: str) -> UserIdentity:
    resp = await client.request_json(
        "POST", "/v3/keys/query", {"device_keys": {user_id: []}, "timeout": 10000}
    )
    if resp.status != 200:
        raise CrossSigningError(f"/keys/query failed: HTTP {resp.status} {resp.body.get('errcode', '')}")
    body = resp.body
    return UserIdentity(
        master_key=body.get("master_keys", {}).get(user_id),
        self_signing_key=body.get("self_signing_keys", {}).get(user_id),
        user_signing_key=body.get("user_signing_keys", {}).get(user_id),
        devices=body.get("device_keys", {}).get(user_id, {}) or {},
    )


async def post_with_uia(
    client: SottoAsyncClient,
    path: str,
    body: dict[str, Any],
    password: str | None,
) -> dict[str, Any]:
    """POST behind user-interactive auth, completing it with `m.login.password`, or with the
    `m.oauth` stage (approval in a browser), whichever the server asks for."""
    resp = await client.request_json("POST", path, body)
    if resp.status == 200:
        return resp.body
    if resp.status != 401 or "flows" not in resp.body:
        raise CrossSigningError(f"{path} failed: HTTP {resp.status} {resp.body.get('errcode', '')}")
    flows = [f.get("stages", []) for f in resp.body.get("flows", [])]
    if [OAUTH_STAGE] in flows:
        return await _approved_in_browser(client, path, body, resp.body)
    if ["m.login.password"] not in flows:
        raise CrossSigningError(f"{path}: no password-only auth flow offered ({flows})")
    if not password:
        raise CrossSigningError(f"{path} needs the account password (user-interactive auth)")
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": client.user_id},
        "password": password,
        "session": resp.body.get("session"),
    }
    resp = await client.request_json("POST", path, {**body, "auth": auth})
    if resp.status != 200:
        raise CrossSigningError(
            f"{path} failed after auth: HTTP {resp.status} {resp.body.get('errcode', '')}"
        )
    return resp.body


async def _approved_in_browser(
    client: SottoAsyncClient,
    path: str,
    body: dict[str, Any],
    challenge: dict[str, Any],
) -> dict[str, Any]:
    """The `m.oauth` stage: the user approves at the server's URL (the account page of an
    OAuth login), and the request, retried with the session only, then goes through."""
    params = (challenge.get("params") or {}).get(OAUTH_STAGE) or {}
    url = params.get("url") if isinstance(params, dict) else None
    if not isinstance(url, str):
        raise CrossSigningError(f"{path}: the server asked for approval in a browser but gave no URL")
    log.warning("%s needs your approval: open %s (waiting up to %d min)", path, url, APPROVAL_WAIT_S // 60)
    retry = {**body, "auth": {"session": challenge.get("session")}}
    try:
        async with asyncio.timeout(APPROVAL_WAIT_S):
            while True:
                await asyncio.sleep(APPROVAL_POLL_S)
                resp = await client.request_json("POST", path, retry)
                if resp.status == 200:
                    return resp.body
                if resp.status != 401 or "flows" not in resp.body:
                    raise CrossSigningError(
                        f"{path} failed after approval: HTTP {resp.status} {resp.body.get('errcode', '')}"
                    )
    except TimeoutError:
        raise CrossSigningError(f"{path}: not approved within {APPROVAL_WAIT_S:.0f} s") from None


async def upload_signatures(client: SottoAsyncClient, signed: dict[str, dict[str, Any]]) -> None:
    """POST /keys/signatures/upload for objects of the bot's own user or others."""
    resp = await client.request_json("POST", "/v3/keys/signatures/upload", signed)
    if resp.status != 200:
        raise CrossSigningError(f"signature upload failed: HTTP {resp.status} {resp.body.get('errcode', '')}")
    failures = resp.body.get("failures") or {}
    if failures:
        raise CrossSigningError(f"signature upload rejected: {failures}")


@dataclass(slots=True)
class BootstrapResult:
    master_public: str
    uploaded_keys: bool
    signed_device: bool
    # The master private key, only when it was just created (for secret storage); never logged.
    new_master_seed: bytes | None = field(default=None, repr=False)


class CrossSigning:
    """Bootstraps and uses the bot's cross-signing identity."""

    def __init__(
        self,
        client: SottoAsyncClient,
        store: StoreDir,
        *,
        password: str | None = None,
        keep_master_key: bool = False,
    ) -> None:
        self.client = client
        self.store = store
        self.password = password
        self.keep_master_key = keep_master_key
        self.keys: CrossSigningKeys | None = None

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    async def bootstrap(self, reset: bool = False) -> BootstrapResult:
        """Make sure the account has our cross-signing keys and this device is signed by them.

        With no local keys and a different identity on the server, the bot refuses to replace it
        unless `reset` is true: that identity may belong to a human's other session.
        """
        local = None if reset else load_keys(self.store)
        server = await query_identity(self.client, self.user_id)
        uploaded = False
        if local is not None and server.master_public == local.master_public:
            keys = local
        elif local is None and server.master_public is not None and not reset:
            raise CrossSigningError(
                "the account already has cross-signing keys this bot does not hold; "
                "run `sotto-bot login --reset-cross-signing` to replace them"
            )
        else:
            keys = local or CrossSigningKeys.generate()
            body = keys.upload_body(self.user_id)
            body["master_key"] = self._device_signed(body["master_key"])
            await post_with_uia(self.client, "/v3/keys/device_signing/upload", body, self.password)
            keys.uploaded = body
            uploaded = True
            log.info("uploaded cross-signing keys for %s (master %s)", self.user_id, keys.master_public)
        save_keys(self.store, keys, self.keep_master_key)
        new_master_seed = keys.master_seed if uploaded else None
        if not self.keep_master_key:
            keys.master_seed = None
        self.keys = keys
        if uploaded:
            server = await query_identity(self.client, self.user_id)
        signed = await self.sign_own_device(server)
        return BootstrapResult(keys.master_public, uploaded, signed, new_master_seed)

    def _device_signed(self, master_key: dict[str, Any]) -> dict[str, Any]:
        """The master key signed by this device too, which helps peers migrating from device trust."""
        if not self.client.olm:
            return master_key
        signature = self.client.olm.account.sign(signing_payload(master_key).decode())
        signed = copy.deepcopy(master_key)
        signed.setdefault("signatures", {}).setdefault(self.user_id, {})[
            f"ed25519:{self.client.device_id}"
        ] = signature
        return signed

    async def sign_own_device(self, server: UserIdentity | None = None) -> bool:
        """Sign this device's keys with the self-signing key; False if already signed."""
        return await self.sign_device(str(self.client.device_id), server)

    async def sign_device(
        self, device_id: str, server: UserIdentity | None = None, ed25519: str | None = None
    ) -> bool:
        """Sign one of the bot's devices (this one, or another after verifying it) with the
        self-signing key; False if already signed. With `ed25519` (the key a verification
        proved), refuse unless the server's device object carries exactly that key."""
        if self.keys is None:
            raise CrossSigningError("cross-signing keys are not loaded")
        server = server or await query_identity(self.client, self.user_id)
        device = server.devices.get(device_id)
        if device is None:
            raise CrossSigningError(f"the keys of device {device_id} are not on the server")
        if ed25519 is not None and device.get("keys", {}).get(f"ed25519:{device_id}") != ed25519:
            raise CrossSigningError(f"the server's keys for device {device_id} are not the verified ones")
        ssk_id = f"ed25519:{self.keys.self_signing_public}"
        if verify_signature(device, self.user_id, ssk_id, self.keys.self_signing_public):
            return False
        own = {k: v for k, v in device.items() if k != "unsigned"}
        own["signatures"] = {self.user_id: dict(device.get("signatures", {}).get(self.user_id, {}))}
        signed = sign_json(own, self.keys.self_signing_seed, self.user_id, ssk_id)
        await upload_signatures(self.client, {self.user_id: {device_id: signed}})
        log.info("signed device %s with the self-signing key", device_id)
        return True

    async def sign_user(self, user_id: str, master_key: dict[str, Any]) -> None:
        """After verifying another user, vouch for their master key with our user-signing key."""
        if self.keys is None:
            raise CrossSigningError("cross-signing keys are not loaded")
        public = only_key(master_key)
        if public is None:
            raise CrossSigningError(f"{user_id} has no usable master key")
        obj = {k: v for k, v in master_key.items() if k != "unsigned"}
        signed = sign_json(
            obj, self.keys.user_signing_seed, self.user_id, f"ed25519:{self.keys.user_signing_public}"
        )
        await upload_signatures(self.client, {user_id: {public: signed}})


__all__ = [
    "BootstrapResult",
    "CrossSigning",
    "CrossSigningError",
    "CrossSigningKeys",
    "UserIdentity",
    "public_key",
    "query_identity",
    "sign_json",
    "verify_signature",
]
