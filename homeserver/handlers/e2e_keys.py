"""End-to-end keys: upload, query, claim and changes of device and one-time keys.

The server stores public keys and relays them; it checks what it can check cheaply
(that device keys belong to the uploading device and carry that device's valid
self-signature, sizes and counts) and never logs key material.
Cross-signing keys (/keys/device_signing/upload) and signatures (/keys/signatures/upload)
are checked against the keys they claim to be signed by before they are stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from homeserver import jsonutil
from homeserver.errors import Codes, MatrixError, bad_json, invalid_param, missing_param
from homeserver.handlers.auth import Requester
from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.handlers.uia import UserInteractiveAuth
from homeserver.storage.e2e_keys import E2EKeyStore, OneTimeKeyConflict, Signature, TooManyKeys, UploadKey
from homeserver.sync.tokens import SyncToken
from homeserver.types import JsonDict

log = logging.getLogger(__name__)

MAX_ONE_TIME_KEYS_PER_UPLOAD = 200
MAX_ONE_TIME_KEYS_STORED = 1000
MAX_KEY_JSON_BYTES = 4096
MAX_DEVICE_KEYS_JSON_BYTES = 16 * 1024
MAX_QUERY_USERS = 1000
MAX_QUERY_DEVICES = 10_000
MAX_ID_LEN = 255

# Federation (bridge/) fills these: ask remote servers for their users' keys.
# (server_name, {user: [device ids]}, timeout_ms) -> /user/keys/query response body.
RemoteQuery = Callable[[str, dict[str, list[str]], int], Awaitable[JsonDict]]
# (server_name, {user: {device: algorithm}}, timeout_ms) -> /user/keys/claim response body.
RemoteClaim = Callable[[str, dict[str, dict[str, str]], int], Awaitable[JsonDict]]


def server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def check_user_id(user_id: Any) -> str:
    if (
        not isinstance(user_id, str)
        or not user_id.startswith("@")
        or ":" not in user_id
        or len(user_id) > MAX_ID_LEN
    ):
        raise invalid_param("Invalid user ID")
    return user_id


def _json_size(obj: Any) -> int:
    return len(jsonutil.dumpb(obj))


def verify_ed25519(obj: JsonDict, user_id: str, key_id: str, public_key: str) -> bool:
    """Check `obj` carries a valid signature by `user_id`'s key `key_id` ("ed25519:..")."""
    from signedjson.key import decode_verify_key_bytes
    from signedjson.sign import SignatureVerifyException, verify_signed_json
    from unpaddedbase64 import decode_base64

    try:
        verify_key = decode_verify_key_bytes(key_id, decode_base64(public_key))
        sigs = obj.get("signatures")
        if (
            not isinstance(sigs, dict)
            or not isinstance(sigs.get(user_id), dict)
            or key_id not in sigs[user_id]
        ):
            return False
        # verify_signed_json checks every signature by this user under the key's name only.
        verify_signed_json(obj, user_id, verify_key)
        return True
    except (SignatureVerifyException, ValueError, TypeError, KeyError, AttributeError):
        return False


# Request parsing -----------------------------------------------------------------------------


@dataclass(slots=True)
class UploadRequest:
    device_keys: JsonDict | None
    one_time_keys: list[UploadKey] = field(default_factory=list)
    fallback_keys: list[UploadKey] = field(default_factory=list)


def _parse_key_map(raw: Any, name: str, limit: int) -> list[UploadKey]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise bad_json(f"{name} must be an object")
    if len(raw) > limit:
        raise MatrixError(400, Codes.TOO_LARGE, f"Too many keys in {name} (at most {limit})")
    keys: list[UploadKey] = []
    for full_id, key in raw.items():
        algorithm, sep, key_id = full_id.partition(":")
        if not sep or not algorithm or not key_id or len(algorithm) > 64 or len(key_id) > MAX_ID_LEN:
            raise bad_json(f"Invalid key ID in {name}; expected <algorithm>:<key_id>")
        if not isinstance(key, (str, dict)):
            raise bad_json(f"Keys in {name} must be strings or objects")
        if isinstance(key, dict) and not isinstance(key.get("key"), str):
            raise bad_json(f"Key objects in {name} need a string 'key'")
        encoded = jsonutil.dumps(key)
        if len(encoded) > MAX_KEY_JSON_BYTES:
            raise MatrixError(400, Codes.TOO_LARGE, f"A key in {name} is too large")
        keys.append(UploadKey(algorithm, key_id, encoded))
    return keys


def parse_upload(body: JsonDict, requester: Requester) -> UploadRequest:
    device_keys = body.get("device_keys")
    if device_keys is not None:
        device_keys = _check_device_keys(device_keys, requester)
    one_time = _parse_key_map(body.get("one_time_keys"), "one_time_keys", MAX_ONE_TIME_KEYS_PER_UPLOAD)
    fallback = _parse_key_map(body.get("fallback_keys"), "fallback_keys", 16)
    algorithms = [k.algorithm for k in fallback]
    if len(set(algorithms)) != len(algorithms):
        raise invalid_param("At most one fallback key per algorithm")
    return UploadRequest(device_keys, one_time, fallback)


def _check_device_keys(dk: Any, requester: Requester) -> JsonDict:
    if not isinstance(dk, dict):
        raise bad_json("device_keys must be an object")
    for name in ("user_id", "device_id", "algorithms", "keys", "signatures"):
        if name not in dk:
            raise missing_param(f"device_keys.{name}")
    if dk["user_id"] != requester.user_id:
        raise invalid_param("device_keys.user_id does not match the logged-in user")
    if dk["device_id"] != requester.device_id:
        raise invalid_param("device_keys.device_id does not match the logged-in device")
    algorithms, keys = dk["algorithms"], dk["keys"]
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise bad_json("device_keys.algorithms must be a list of strings")
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise bad_json("device_keys.keys must map key IDs to strings")
    if not isinstance(dk["signatures"], dict):
        raise bad_json("device_keys.signatures must be an object")
    if _json_size(dk) > MAX_DEVICE_KEYS_JSON_BYTES:
        raise MatrixError(400, Codes.TOO_LARGE, "device_keys is too large")
    signing_key_id = f"ed25519:{requester.device_id}"
    public = keys.get(signing_key_id)
    if not isinstance(public, str):
        raise bad_json(f"device_keys.keys must include {signing_key_id}")
    if not verify_ed25519(dk, requester.user_id, signing_key_id, public):
        raise MatrixError(
            400, Codes.INVALID_SIGNATURE, "device_keys are not signed by the device's ed25519 key"
        )
    return dk


def parse_query(body: JsonDict) -> dict[str, list[str]]:
    raw = body.get("device_keys")
    if raw is None:
        raise missing_param("device_keys")
    if not isinstance(raw, dict):
        raise bad_json("device_keys must be an object")
    if len(raw) > MAX_QUERY_USERS:
        raise MatrixError(400, Codes.TOO_LARGE, f"At most {MAX_QUERY_USERS} users per query")
    query: dict[str, list[str]] = {}
    total = 0
    for user_id, device_ids in raw.items():
        check_user_id(user_id)
        if device_ids is None:
            device_ids = []
        if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
            raise bad_json("device_keys values must be lists of device IDs")
        total += len(device_ids)
        query[user_id] = list(device_ids)
    if total > MAX_QUERY_DEVICES:
        raise MatrixError(400, Codes.TOO_LARGE, "Too many devices in query")
    return query


def parse_claim(body: JsonDict) -> dict[str, dict[str, str]]:
    raw = body.get("one_time_keys")
    if raw is None:
        raise missing_param("one_time_keys")
    if not isinstance(raw, dict):
        raise bad_json("one_time_keys must be an object")
    claim: dict[str, dict[str, str]] = {}
    total = 0
    for user_id, devices in raw.items():
        check_user_id(user_id)
        if not isinstance(devices, dict) or not all(isinstance(a, str) for a in devices.values()):
            raise bad_json("one_time_keys values must map device IDs to algorithms")
        total += len(devices)
        claim[user_id] = dict(devices)
    if total > MAX_QUERY_DEVICES:
        raise MatrixError(400, Codes.TOO_LARGE, "Too many keys in claim")
    return claim


def parse_timeout(body: JsonDict) -> int:
    timeout = body.get("timeout", 10_000)
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise bad_json("timeout must be an integer")
    return max(0, min(timeout, 30_000))


def parse_stream_token(raw: str | None, name: str) -> int:
    """The stream position of a sync token ("s{stream}_{...}") given to /keys/changes."""
    if raw is None:
        raise missing_param(name)
    try:
        return SyncToken.parse(raw).stream
    except MatrixError:
        raise invalid_param(f"Invalid {name} token") from None


# The handler ---------------------------------------------------------------------------------


class E2EKeysHandler:
    def __init__(
        self,
        store: E2EKeyStore,
        device_lists: DeviceListHandler,
        server_name: str,
        time_ms: Callable[[], int],
    ) -> None:
        self.store = store
        self.device_lists = device_lists
        self.server_name = server_name
        self.time_ms = time_ms
        self.remote_query: RemoteQuery | None = None
        self.remote_claim: RemoteClaim | None = None

    def is_mine(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    async def upload(self, requester: Requester, req: UploadRequest) -> JsonDict:
        if not requester.device_id:
            # An application service acting without `device_id=`: keys need a device.
            raise MatrixError(400, Codes.MISSING_PARAM, "Uploading keys needs a device (device_id)")
        try:
            counts, changed = await self.store.upload(
                requester.user_id,
                requester.device_id,
                req.device_keys,
                req.one_time_keys,
                req.fallback_keys,
                self.time_ms(),
                MAX_ONE_TIME_KEYS_STORED,
            )
        except OneTimeKeyConflict as e:
            raise invalid_param(f"One-time key {e.key_id} already exists with different content") from None
        except TooManyKeys:
            raise MatrixError(
                400, Codes.TOO_LARGE, f"At most {MAX_ONE_TIME_KEYS_STORED} one-time keys are kept per device"
            ) from None
        if changed:
            await self.device_lists.changed(requester.user_id)
        # Clients read signed_curve25519 unconditionally (Synapse always sends it).
        counts.setdefault("signed_curve25519", 0)
        return {"one_time_key_counts": counts}

    async def query(self, requester: Requester, query: dict[str, list[str]], timeout_ms: int) -> JsonDict:
        local = {u: d for u, d in query.items() if self.is_mine(u)}
        device_keys: dict[str, dict[str, JsonDict]] = {u: {} for u in local}
        device_keys.update(await self.store.get_device_keys(local))
        master: dict[str, JsonDict] = {}
        self_signing: dict[str, JsonDict] = {}
        user_signing: dict[str, JsonDict] = {}
        cross = await self.store.get_cross_signing_keys(list(local), viewer=requester.user_id)
        for user_id, keys in cross.items():
            if "master" in keys:
                master[user_id] = keys["master"]
            if "self_signing" in keys:
                self_signing[user_id] = keys["self_signing"]
            if "user_signing" in keys and user_id == requester.user_id:
                user_signing[user_id] = keys["user_signing"]
        failures: dict[str, JsonDict] = {}
        remote: dict[str, dict[str, list[str]]] = {}
        for user_id, devices in query.items():
            if not self.is_mine(user_id):
                remote.setdefault(server_of(user_id), {})[user_id] = devices
        for server, users in remote.items():
            if self.remote_query is None:
                failures[server] = {"status": 503, "message": "Federation is not available"}
                continue
            try:
                answer = await self.remote_query(server, users, timeout_ms)
            except Exception as e:
                log.info("key query to %s failed: %s", server, type(e).__name__)
                failures[server] = {"status": 503, "message": "Could not reach the server"}
                continue
            for section, target in (
                ("device_keys", device_keys),
                ("master_keys", master),
                ("self_signing_keys", self_signing),
            ):
                part = answer.get(section)
                if isinstance(part, dict):
                    target.update({u: v for u, v in part.items() if u in users and isinstance(v, dict)})
        return {
            "device_keys": device_keys,
            "master_keys": master,
            "self_signing_keys": self_signing,
            "user_signing_keys": user_signing,
            "failures": failures,
        }

    async def claim(
        self, requester: Requester, claim: dict[str, dict[str, str]], timeout_ms: int
    ) -> JsonDict:
        wanted = [(u, d, a) for u, devices in claim.items() if self.is_mine(u) for d, a in devices.items()]
        keys = await self.store.claim(wanted) if wanted else {}
        failures: dict[str, JsonDict] = {}
        remote: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in claim.items():
            if not self.is_mine(user_id):
                remote.setdefault(server_of(user_id), {})[user_id] = devices
        for server, users in remote.items():
            if self.remote_claim is None:
                failures[server] = {"status": 503, "message": "Federation is not available"}
                continue
            try:
                answer = await self.remote_claim(server, users, timeout_ms)
            except Exception as e:
                log.info("key claim to %s failed: %s", server, type(e).__name__)
                failures[server] = {"status": 503, "message": "Could not reach the server"}
                continue
            part = answer.get("one_time_keys")
            if isinstance(part, dict):
                keys.update({u: v for u, v in part.items() if u in users and isinstance(v, dict)})
        return {"one_time_keys": keys, "failures": failures}

    async def changes(
        self, requester: Requester, from_stream: int, to_stream: int, joined_room_ids: list[str]
    ) -> JsonDict:
        changed, left = await self.device_lists.get_changes(
            requester.user_id, from_stream, to_stream, joined_room_ids
        )
        return {"changed": changed, "left": left}

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        counts, fallback = await self.store.key_counts(user_id, device_id)
        counts.setdefault("signed_curve25519", 0)
        return counts, fallback

    async def on_devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        await self.store.delete_device_keys(user_id, device_ids)
        await self.device_lists.changed(user_id)


# Cross-signing ------------------------------------------------------------------------------

CROSS_SIGNING_TYPES = {
    "master_key": "master",
    "self_signing_key": "self_signing",
    "user_signing_key": "user_signing",
}
DEVICE_SIGNING_OPERATION = "POST /keys/device_signing/upload"


def _strip(obj: JsonDict) -> JsonDict:
    """The signed content of a key object: everything but signatures and unsigned."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def cross_signing_public_key(key: JsonDict) -> str:
    """The ed25519 public key of a cross-signing key object, checked for shape."""
    keys = key.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise bad_json("A cross-signing key must have exactly one key in 'keys'")
    ((key_id, public),) = keys.items()
    if not isinstance(public, str) or key_id != f"ed25519:{public}" or not public or len(public) > 128:
        raise bad_json("Cross-signing keys must be 'ed25519:<public key>': '<public key>'")
    return public


def parse_cross_signing_upload(body: JsonDict, user_id: str) -> dict[str, tuple[str, JsonDict]]:
    """{key_type: (public_key, key)} for the keys present in a device_signing/upload body."""
    out: dict[str, tuple[str, JsonDict]] = {}
    for field_name, key_type in CROSS_SIGNING_TYPES.items():
        key = body.get(field_name)
        if key is None:
            continue
        if not isinstance(key, dict):
            raise bad_json(f"{field_name} must be an object")
        if key.get("user_id") != user_id:
            raise invalid_param(f"{field_name}.user_id does not match the logged-in user")
        usage = key.get("usage")
        if not isinstance(usage, list) or key_type not in usage:
            raise invalid_param(f"{field_name}.usage must include {key_type}")
        sigs = key.get("signatures", {})
        if not isinstance(sigs, dict):
            raise bad_json(f"{field_name}.signatures must be an object")
        if _json_size(key) > MAX_DEVICE_KEYS_JSON_BYTES:
            raise MatrixError(400, Codes.TOO_LARGE, f"{field_name} is too large")
        out[key_type] = (cross_signing_public_key(key), key)
    return out


class CrossSigningHandler:
    def __init__(self, store: E2EKeyStore, device_lists: DeviceListHandler, uia: UserInteractiveAuth) -> None:
        self.store = store
        self.device_lists = device_lists
        self.uia = uia

    async def upload_keys(self, requester: Requester, body: JsonDict) -> None:
        user_id = requester.user_id
        new = parse_cross_signing_upload(body, user_id)
        existing = (await self.store.get_cross_signing_keys([user_id], viewer=None)).get(user_id, {})
        if not new:
            return
        # UIA is needed only to replace keys: a first upload, or a retry of the very same
        # keys (a lost response), goes through without it.
        same = all(t in existing and _strip(existing[t]) == _strip(key) for t, (_, key) in new.items())
        if same:
            return
        if "master" in existing:
            flows, params = await self.uia.reset_flows(user_id, requester.device_id)
            result = await self.uia.check(
                operation=DEVICE_SIGNING_OPERATION,
                flows=flows,
                auth=body.get("auth"),
                requester=user_id,
                params=params,
            )
            await self.uia.finish(result)
        master_key = new["master"][1] if "master" in new else existing.get("master")
        if master_key is None:
            raise invalid_param("A master key is needed before self-signing or user-signing keys")
        master_public = cross_signing_public_key(master_key)
        for key_type in ("self_signing", "user_signing"):
            if key_type in new and not verify_ed25519(
                new[key_type][1], user_id, f"ed25519:{master_public}", master_public
            ):
                raise MatrixError(
                    400, Codes.INVALID_SIGNATURE, f"The {key_type} key is not signed by the master key"
                )
        await self.store.set_cross_signing_keys(user_id, new)
        await self.device_lists.changed(user_id)

    async def upload_signatures(self, requester: Requester, body: JsonDict) -> JsonDict:
        user_id = requester.user_id
        failures: dict[str, dict[str, JsonDict]] = {}
        accepted: list[Signature] = []
        changed: set[str] = set()

        def fail(target_user: str, key_id: str, errcode: Codes, message: str) -> None:
            failures.setdefault(target_user, {})[key_id] = {"errcode": str(errcode), "error": message}

        total = sum(len(v) for v in body.values() if isinstance(v, dict))
        if total > MAX_QUERY_DEVICES:
            raise MatrixError(400, Codes.TOO_LARGE, "Too many signatures")
        own_cross = (await self.store.get_cross_signing_keys([user_id], viewer=None)).get(user_id, {})
        for target_user, objects in body.items():
            check_user_id(target_user)
            if not isinstance(objects, dict):
                raise bad_json("signatures/upload values must map key IDs to signed objects")
            target_cross = (
                own_cross
                if target_user == user_id
                else (await self.store.get_cross_signing_keys([target_user], viewer=None)).get(
                    target_user, {}
                )
            )
            for key_id, signed in objects.items():
                if not isinstance(signed, dict) or not isinstance(signed.get("signatures"), dict):
                    fail(target_user, key_id, Codes.BAD_JSON, "Expected a signed key object")
                    continue
                sigs = await self._check_one(user_id, target_user, key_id, signed, own_cross, target_cross)
                if isinstance(sigs, MatrixError):
                    fail(target_user, key_id, Codes(sigs.errcode), sigs.message)
                    continue
                accepted.extend(sigs)
                changed.add(target_user)
        if accepted:
            # The target's keys changed: the signer's clients must fetch them again (a client
            # marks a user verified by their own user-signing key only once it sees it).
            await self.store.add_signatures(accepted, changed)
            for changed_user in changed:
                if changed_user == user_id:
                    await self.device_lists.changed(changed_user)
                else:
                    self.device_lists.signed_for(user_id)
        return {"failures": failures}

    async def _check_one(
        self,
        signer: str,
        target_user: str,
        key_id: str,
        signed: JsonDict,
        own_cross: dict[str, JsonDict],
        target_cross: dict[str, JsonDict],
    ) -> list[Signature] | MatrixError:
        """The new, valid signatures by `signer` on one key, or the error to report for it."""
        target_master = target_cross.get("master")
        master_public = cross_signing_public_key(target_master) if target_master else None
        if target_user == signer and key_id != master_public:
            # The signer's own device, signed with their self-signing key.
            stored = await self.store.get_device_key(signer, key_id)
            if stored is None:
                return MatrixError(404, Codes.NOT_FOUND, "Unknown device")
            ssk = own_cross.get("self_signing")
            if ssk is None:
                return MatrixError(400, Codes.INVALID_SIGNATURE, "No self-signing key to verify with")
            return self._verified(
                signer, target_user, key_id, stored, signed, [cross_signing_public_key(ssk)]
            )
        if master_public is None or key_id != master_public:
            return MatrixError(404, Codes.NOT_FOUND, "Unknown key")
        assert target_master is not None
        if target_user == signer:
            # The signer's own master key, signed by one of their devices.
            devices = (await self.store.get_device_keys({signer: []})).get(signer, {})
            device_keys: dict[str, str] = {}
            for device_id, dk in devices.items():
                public = (dk.get("keys") or {}).get(f"ed25519:{device_id}")
                if isinstance(public, str):
                    device_keys[f"ed25519:{device_id}"] = public
            return self._verified(
                signer,
                target_user,
                key_id,
                target_master,
                signed,
                list(device_keys.values()),
                key_ids=device_keys,
            )
        usk = own_cross.get("user_signing")
        if usk is None:
            return MatrixError(400, Codes.INVALID_SIGNATURE, "No user-signing key to verify with")
        return self._verified(
            signer, target_user, key_id, target_master, signed, [cross_signing_public_key(usk)]
        )

    @staticmethod
    def _verified(
        signer: str,
        target_user: str,
        key_id: str,
        stored: JsonDict,
        signed: JsonDict,
        publics: list[str],
        key_ids: dict[str, str] | None = None,
    ) -> list[Signature] | MatrixError:
        if _strip(stored) != _strip(signed):
            return MatrixError(
                400, Codes.INVALID_SIGNATURE, "The signed object does not match the stored key"
            )
        allowed = key_ids if key_ids is not None else {f"ed25519:{p}": p for p in publics}
        by_signer = signed["signatures"].get(signer)
        if not isinstance(by_signer, dict):
            return MatrixError(400, Codes.INVALID_SIGNATURE, "No signature by the uploading user")
        out: list[Signature] = []
        for sig_key_id, signature in by_signer.items():
            public = allowed.get(sig_key_id)
            if public is None or not isinstance(signature, str) or len(signature) > 255:
                continue
            candidate = dict(_strip(stored))
            candidate["signatures"] = {signer: {sig_key_id: signature}}
            if not verify_ed25519(candidate, signer, sig_key_id, public):
                return MatrixError(400, Codes.INVALID_SIGNATURE, "Invalid signature")
            out.append(Signature(target_user, key_id, signer, sig_key_id, signature))
        if not out:
            return MatrixError(400, Codes.INVALID_SIGNATURE, "No signature by an acceptable key")
        return out
