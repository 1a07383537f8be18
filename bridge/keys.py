"""Server signing keys: publishing ours, fetching and caching others', and acting as a notary.

- `LocalKeys` builds this server's signed `/_matrix/key/v2/server` response: the current
  key in `verify_keys`, rotated-out keys in `old_verify_keys` (from `<signing key>.old`).
- `KeyRing` answers "which verify key did server S use under key ID K, valid at time T?".
  Keys are cached in memory (bounded) and in `server_keys`; the signed responses are kept
  verbatim in `federation_server_key_json` so `/_matrix/key/v2/query` can re-serve them.
  Fetching goes to the server itself first, then to configured notaries.

Invariants: a response is accepted only if it names the server we asked about and is signed
by every key it lists in `verify_keys`; a notary's answer must also carry the notary's own
valid signature. A cached key is trusted only up to min(valid_until_ts, fetch time + 7 days).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import signedjson.key
from signedjson.types import SigningKey, VerifyKey
from sqlalchemy import delete, insert, select
from unpaddedbase64 import decode_base64

from bridge.schema import federation_server_key_json
from homeserver import jsonutil
from homeserver.clock import Clock
from homeserver.events import (
    SignatureError,
    decode_signing_key,
    decode_verify_key,
    encode_signing_key,
    encode_verify_key,
    generate_signing_key,
    sign_json_object,
    verify_json_signature,
    verify_key_id,
)
from homeserver.storage.engine import Database
from homeserver.storage.schema import server_keys

log = logging.getLogger(__name__)

# How long our published key response claims to be valid (others re-fetch after this).
KEY_RESPONSE_VALIDITY_MS = 24 * 3600 * 1000
# The spec caps how far into the future a fetched key may be trusted.
MAX_KEY_TRUST_MS = 7 * 24 * 3600 * 1000
_CACHE_LIMIT = 10_000


class KeyFetchError(Exception):
    """No valid key could be found for a server."""


@dataclass(frozen=True, slots=True)
class OldKey:
    key_id: str
    key_base64: str
    expired_ts: int


def old_keys_path(signing_key_path: str) -> str:
    return signing_key_path + ".old"


def load_old_keys(signing_key_path: str) -> list[OldKey]:
    """Old verify keys: lines `<key_id> <base64 public key> <expired_ts>`."""
    path = old_keys_path(signing_key_path)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                out.append(OldKey(parts[0], parts[1], int(parts[2])))
    return out


def rotate_signing_key(signing_key_path: str, now_ms: int) -> SigningKey:
    """Replace the signing key with a new one; the old one is published in old_verify_keys."""
    with open(signing_key_path) as f:
        old = decode_signing_key(f.read().strip())
    with open(old_keys_path(signing_key_path), "a") as f:
        f.write(f"{verify_key_id(old)} {encode_verify_key(old)} {now_ms}\n")
    new = generate_signing_key("a_" + os.urandom(3).hex())
    tmp = signing_key_path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_signing_key(new) + "\n")
    os.replace(tmp, signing_key_path)
    return new


class LocalKeys:
    def __init__(
        self, server_name: str, signing_key: SigningKey, old_keys: list[OldKey], clock: Clock
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.key_id = verify_key_id(signing_key)
        self.old_keys = old_keys
        self.clock = clock

    def key_response(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "server_name": self.server_name,
            "valid_until_ts": self.clock.time_ms() + KEY_RESPONSE_VALIDITY_MS,
            "verify_keys": {self.key_id: {"key": encode_verify_key(self.signing_key)}},
            "old_verify_keys": {
                k.key_id: {"key": k.key_base64, "expired_ts": k.expired_ts} for k in self.old_keys
            },
        }
        return sign_json_object(body, self.server_name, self.signing_key)

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return sign_json_object(obj, self.server_name, self.signing_key)


@dataclass(slots=True)
class CachedKey:
    verify_key: VerifyKey
    # Valid for signatures made before this time (expired_ts for old keys).
    valid_until_ts: int


# Fetchers supplied by the federation client (keeps this module free of HTTP).
DirectFetch = Callable[[str], Awaitable[dict[str, Any]]]
NotaryFetch = Callable[[str, dict[str, dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


def parse_key_response(response: dict[str, Any], server_name: str, now_ms: int) -> dict[str, CachedKey]:
    """Validate a server's key response; return its keys. Raises KeyFetchError."""
    if response.get("server_name") != server_name:
        raise KeyFetchError(f"key response names {response.get('server_name')!r}, not {server_name!r}")
    valid_until = response.get("valid_until_ts")
    if not isinstance(valid_until, int):
        raise KeyFetchError("key response lacks valid_until_ts")
    trusted_until = min(valid_until, now_ms + MAX_KEY_TRUST_MS)
    keys: dict[str, CachedKey] = {}
    verify_keys = response.get("verify_keys")
    if not isinstance(verify_keys, dict) or not verify_keys:
        raise KeyFetchError("key response has no verify_keys")
    for key_id, data in verify_keys.items():
        keys[key_id] = CachedKey(_decode(key_id, data), trusted_until)
    for key_id, cached in keys.items():
        try:
            verify_json_signature(response, server_name, cached.verify_key)
        except SignatureError as e:
            raise KeyFetchError(f"key response not signed by {key_id}: {e}") from None
    old = response.get("old_verify_keys")
    if isinstance(old, dict):
        for key_id, data in old.items():
            expired = data.get("expired_ts") if isinstance(data, dict) else None
            if isinstance(expired, int) and key_id not in keys:
                try:
                    keys[key_id] = CachedKey(_decode(key_id, data), expired)
                except KeyFetchError:
                    continue
    return keys


def _decode(key_id: str, data: Any) -> VerifyKey:
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise KeyFetchError(f"malformed key {key_id}")
    try:
        decode_base64(data["key"])
        return decode_verify_key(key_id, data["key"])
    except Exception as e:
        raise KeyFetchError(f"malformed key {key_id}: {e}") from None


class KeyRing:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        local: LocalKeys,
        direct: DirectFetch,
        notary: NotaryFetch,
        notaries: list[str],
    ) -> None:
        self.db = db
        self.clock = clock
        self.local = local
        self.direct = direct
        self.notary = notary
        self.notaries = notaries
        self._cache: dict[tuple[str, str], CachedKey] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def get_verify_key(self, server_name: str, key_id: str, valid_at_ts: int) -> VerifyKey:
        """The verify key for (server, key ID), valid at `valid_at_ts`. Raises KeyFetchError."""
        if server_name == self.local.server_name:
            if key_id == self.local.key_id:
                return decode_verify_key(key_id, encode_verify_key(self.local.signing_key))
            for old in self.local.old_keys:
                if old.key_id == key_id and valid_at_ts <= old.expired_ts:
                    return decode_verify_key(key_id, old.key_base64)
            raise KeyFetchError(f"unknown local key {key_id}")
        found = self._cache.get((server_name, key_id))
        if found is None:
            found = await self._load_db(server_name, key_id)
        if found is not None and found.valid_until_ts >= valid_at_ts:
            return found.verify_key
        await self._fetch(server_name)
        found = self._cache.get((server_name, key_id))
        if found is None:
            raise KeyFetchError(f"no key {key_id} for {server_name}")
        if found.valid_until_ts < valid_at_ts:
            raise KeyFetchError(f"key {key_id} of {server_name} is not valid at {valid_at_ts}")
        return found.verify_key

    async def _load_db(self, server_name: str, key_id: str) -> CachedKey | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        server_keys.c.verify_key, server_keys.c.valid_until_ts, server_keys.c.expired_ts
                    ).where(server_keys.c.server_name == server_name, server_keys.c.key_id == key_id)
                )
            ).first()
        if row is None:
            return None
        try:
            vk = signedjson.key.decode_verify_key_bytes(key_id, bytes(row[0]))
        except Exception:
            return None
        cached = CachedKey(vk, int(row[2]) if row[2] is not None else int(row[1]))
        self._remember(server_name, key_id, cached)
        return cached

    def _remember(self, server_name: str, key_id: str, cached: CachedKey) -> None:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[(server_name, key_id)] = cached

    async def _fetch(self, server_name: str) -> None:
        """Fetch a server's keys once, sharing the result among concurrent callers."""
        fut = self._inflight.get(server_name)
        if fut is not None:
            await asyncio.shield(fut)
            return
        fut = asyncio.get_running_loop().create_future()
        self._inflight[server_name] = fut
        try:
            await self._fetch_now(server_name)
        finally:
            del self._inflight[server_name]
            fut.set_result(None)

    async def _fetch_now(self, server_name: str) -> None:
        now = self.clock.time_ms()
        try:
            response = await self.direct(server_name)
            await self.store_response(server_name, response, server_name, now)
            return
        except Exception as e:
            log.info("direct key fetch from %s failed: %s", server_name, e)
        for notary in self.notaries:
            try:
                for response in await self.notary(notary, {server_name: {}}):
                    if response.get("server_name") != server_name:
                        continue
                    await self._check_notary_signature(notary, response)
                    await self.store_response(server_name, response, notary, now)
                return
            except Exception as e:
                log.info("notary key fetch of %s via %s failed: %s", server_name, notary, e)

    async def _check_notary_signature(self, notary: str, response: dict[str, Any]) -> None:
        sigs = response.get("signatures", {}).get(notary, {})
        for key_id in sigs:
            vk = await self.get_verify_key(notary, key_id, self.clock.time_ms())
            verify_json_signature(response, notary, vk)
            return
        raise KeyFetchError(f"notary {notary} did not sign the response")

    async def store_response(
        self, server_name: str, response: dict[str, Any], from_server: str, now_ms: int
    ) -> dict[str, CachedKey]:
        keys = parse_key_response(response, server_name, now_ms)
        raw = jsonutil.dumps(response)
        valid_until = int(response["valid_until_ts"])
        async with self.db.write() as conn:
            for key_id, cached in keys.items():
                expired = cached.valid_until_ts if key_id not in response["verify_keys"] else None
                await conn.execute(
                    delete(server_keys).where(
                        server_keys.c.server_name == server_name, server_keys.c.key_id == key_id
                    )
                )
                await conn.execute(
                    insert(server_keys).values(
                        server_name=server_name,
                        key_id=key_id,
                        verify_key=bytes(cached.verify_key.encode()),
                        valid_until_ts=cached.valid_until_ts,
                        expired_ts=expired,
                    )
                )
                await conn.execute(
                    delete(federation_server_key_json).where(
                        federation_server_key_json.c.server_name == server_name,
                        federation_server_key_json.c.key_id == key_id,
                        federation_server_key_json.c.from_server == from_server,
                    )
                )
                await conn.execute(
                    insert(federation_server_key_json).values(
                        server_name=server_name,
                        key_id=key_id,
                        from_server=from_server,
                        valid_until_ts=valid_until,
                        fetched_ts=now_ms,
                        key_json=raw,
                    )
                )
        for key_id, cached in keys.items():
            self._remember(server_name, key_id, cached)
        return keys

    # Notary ------------------------------------------------------------------------------

    async def notary_lookup(self, server_name: str, minimum_valid_until_ts: int) -> list[dict[str, Any]]:
        """Key responses for `server_name`, each countersigned by this server."""
        if server_name == self.local.server_name:
            return [self.local.key_response()]
        responses = await self._stored_responses(server_name)
        if not any(int(r.get("valid_until_ts", 0)) >= minimum_valid_until_ts for r in responses):
            try:
                response = await self.direct(server_name)
                await self.store_response(server_name, response, server_name, self.clock.time_ms())
                responses = [response]
            except Exception as e:
                log.info("notary: fetching keys of %s failed: %s", server_name, e)
        return [self.local.sign(r) for r in responses]

    async def _stored_responses(self, server_name: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(federation_server_key_json.c.key_json).where(
                        federation_server_key_json.c.server_name == server_name,
                        federation_server_key_json.c.from_server == server_name,
                    )
                )
            ).all()
        unique = {r[0] for r in rows}
        return [jsonutil.loads(raw) for raw in sorted(unique)]
