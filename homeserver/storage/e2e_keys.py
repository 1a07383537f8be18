"""End-to-end keys: device keys, one-time and fallback keys, cross-signing keys and signatures.

Every method is one transaction. Claims delete the one-time key they hand out in the
same transaction (and check the delete hit a row), so a key is given out at most once
even with several workers.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, tuple_, update

from homeserver import jsonutil
from homeserver.storage.device_lists import mark_changed
from homeserver.storage.e2ee_schema import (
    e2e_cross_signing_keys,
    e2e_device_keys,
    e2e_fallback_keys,
    e2e_one_time_keys,
    e2e_signatures,
)
from homeserver.storage.engine import Database
from homeserver.storage.schema import devices
from homeserver.storage.sqlutil import chunks, upsert

JsonDict = dict[str, Any]


class OneTimeKeyConflict(Exception):
    """A one-time key ID was uploaded again with different content."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


class TooManyKeys(Exception):
    pass


@dataclass(slots=True, frozen=True)
class UploadKey:
    algorithm: str
    key_id: str
    key_json: str


@dataclass(slots=True, frozen=True)
class Signature:
    target_user_id: str
    target_key_id: str
    signer_user_id: str
    signer_key_id: str
    signature: str


def _merge_signatures(obj: JsonDict, sigs: list[Signature]) -> JsonDict:
    if not sigs:
        return obj
    merged = dict(obj)
    all_sigs: dict[str, dict[str, str]] = {
        u: dict(s) for u, s in (obj.get("signatures") or {}).items() if isinstance(s, dict)
    }
    for sig in sigs:
        all_sigs.setdefault(sig.signer_user_id, {})[sig.signer_key_id] = sig.signature
    merged["signatures"] = all_sigs
    return merged


class E2EKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Uploads ------------------------------------------------------------------------------

    async def upload(
        self,
        user_id: str,
        device_id: str,
        device_keys: JsonDict | None,
        one_time_keys: list[UploadKey],
        fallback_keys: list[UploadKey],
        ts: int,
        max_one_time_keys: int,
    ) -> tuple[dict[str, int], bool]:
        """Store a device's uploaded keys; returns (one-time key counts, device keys changed).

        Raises OneTimeKeyConflict or TooManyKeys (nothing is stored then).
        """
        changed = False
        async with self.db.write() as conn:
            if device_keys is not None:
                new_json = jsonutil.dumps(device_keys)
                old = (
                    await conn.execute(
                        select(e2e_device_keys.c.key_json).where(
                            e2e_device_keys.c.user_id == user_id, e2e_device_keys.c.device_id == device_id
                        )
                    )
                ).first()
                if old is None or jsonutil.loads(old[0]) != device_keys:
                    changed = True
                    await conn.execute(
                        upsert(
                            conn,
                            e2e_device_keys,
                            {"user_id": user_id, "device_id": device_id, "key_json": new_json, "ts": ts},
                            ["user_id", "device_id"],
                            ["key_json", "ts"],
                        )
                    )
            if one_time_keys:
                existing: dict[tuple[str, str], str] = {}
                for part in chunks([k.key_id for k in one_time_keys]):
                    rows = await conn.execute(
                        select(
                            e2e_one_time_keys.c.algorithm,
                            e2e_one_time_keys.c.key_id,
                            e2e_one_time_keys.c.key_json,
                        ).where(
                            e2e_one_time_keys.c.user_id == user_id,
                            e2e_one_time_keys.c.device_id == device_id,
                            e2e_one_time_keys.c.key_id.in_(part),
                        )
                    )
                    existing.update({(r[0], r[1]): r[2] for r in rows})
                new_rows = []
                for key in one_time_keys:
                    old_json = existing.get((key.algorithm, key.key_id))
                    if old_json is None:
                        new_rows.append(
                            {
                                "user_id": user_id,
                                "device_id": device_id,
                                "algorithm": key.algorithm,
                                "key_id": key.key_id,
                                "key_json": key.key_json,
                                "ts": ts,
                            }
                        )
                    elif jsonutil.loads(old_json) != jsonutil.loads(key.key_json):
                        raise OneTimeKeyConflict(f"{key.algorithm}:{key.key_id}")
                if new_rows:
                    total = (
                        await conn.execute(
                            select(func.count())
                            .select_from(e2e_one_time_keys)
                            .where(
                                e2e_one_time_keys.c.user_id == user_id,
                                e2e_one_time_keys.c.device_id == device_id,
                            )
                        )
                    ).scalar_one()
                    if total + len(new_rows) > max_one_time_keys:
                        raise TooManyKeys()
                    await conn.execute(insert(e2e_one_time_keys), new_rows)
            for key in fallback_keys:
                # One fallback key per algorithm: a new upload replaces it and is unused again.
                await conn.execute(
                    upsert(
                        conn,
                        e2e_fallback_keys,
                        {
                            "user_id": user_id,
                            "device_id": device_id,
                            "algorithm": key.algorithm,
                            "key_id": key.key_id,
                            "key_json": key.key_json,
                            "used": False,
                        },
                        ["user_id", "device_id", "algorithm"],
                        ["key_id", "key_json", "used"],
                    )
                )
            if changed:
                await mark_changed(conn, self.db, [user_id])
            counts = await self._otk_counts(conn, user_id, device_id)
        return counts, changed

    async def _otk_counts(self, conn: Any, user_id: str, device_id: str) -> dict[str, int]:
        rows = await conn.execute(
            select(e2e_one_time_keys.c.algorithm, func.count())
            .where(e2e_one_time_keys.c.user_id == user_id, e2e_one_time_keys.c.device_id == device_id)
            .group_by(e2e_one_time_keys.c.algorithm)
        )
        return {r[0]: int(r[1]) for r in rows}

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """(unclaimed one-time key counts per algorithm, algorithms with an unused fallback key)."""
        async with self.db.read() as conn:
            counts = await self._otk_counts(conn, user_id, device_id)
            rows = await conn.execute(
                select(e2e_fallback_keys.c.algorithm).where(
                    e2e_fallback_keys.c.user_id == user_id,
                    e2e_fallback_keys.c.device_id == device_id,
                    e2e_fallback_keys.c.used.is_(False),
                )
            )
            fallback = sorted(r[0] for r in rows)
        return counts, fallback

    # Claims -------------------------------------------------------------------------------

    async def claim(self, wanted: list[tuple[str, str, str]]) -> dict[str, dict[str, dict[str, Any]]]:
        """Claim one key per (user, device, algorithm): the oldest one-time key, else the fallback key."""
        result: dict[str, dict[str, dict[str, Any]]] = {}
        async with self.db.write() as conn:
            for user_id, device_id, algorithm in wanted:
                key = await self._claim_one(conn, user_id, device_id, algorithm)
                if key is not None:
                    result.setdefault(user_id, {})[device_id] = {
                        f"{algorithm}:{key[0]}": jsonutil.loads(key[1])
                    }
        return result

    async def _claim_one(
        self, conn: Any, user_id: str, device_id: str, algorithm: str
    ) -> tuple[str, str] | None:
        otk = e2e_one_time_keys.c
        for _ in range(5):
            row = (
                await conn.execute(
                    select(otk.key_id, otk.key_json)
                    .where(otk.user_id == user_id, otk.device_id == device_id, otk.algorithm == algorithm)
                    .order_by(otk.ts, otk.key_id)
                    .limit(1)
                )
            ).first()
            if row is None:
                break
            res = await conn.execute(
                delete(e2e_one_time_keys).where(
                    otk.user_id == user_id,
                    otk.device_id == device_id,
                    otk.algorithm == algorithm,
                    otk.key_id == row[0],
                )
            )
            if res.rowcount == 1:
                return row[0], row[1]
        fb = e2e_fallback_keys.c
        row = (
            await conn.execute(
                select(fb.key_id, fb.key_json, fb.used).where(
                    fb.user_id == user_id, fb.device_id == device_id, fb.algorithm == algorithm
                )
            )
        ).first()
        if row is None:
            return None
        if not row[2]:
            await conn.execute(
                update(e2e_fallback_keys)
                .where(fb.user_id == user_id, fb.device_id == device_id, fb.algorithm == algorithm)
                .values(used=True)
            )
        return row[0], row[1]

    # Queries ------------------------------------------------------------------------------

    async def get_device_keys(self, query: dict[str, list[str]]) -> dict[str, dict[str, JsonDict]]:
        """Device keys (with uploaded signatures and display names) of existing devices.

        `query` maps a user ID to device IDs; an empty list means all of the user's devices.
        """
        out: dict[str, dict[str, JsonDict]] = {}
        if not query:
            return out
        dk = e2e_device_keys.c
        async with self.db.read() as conn:
            found: list[tuple[str, str, str, str | None]] = []
            for part in chunks(list(query)):
                rows = await conn.execute(
                    select(dk.user_id, dk.device_id, dk.key_json, devices.c.display_name)
                    .select_from(
                        e2e_device_keys.join(
                            devices, (devices.c.user_id == dk.user_id) & (devices.c.device_id == dk.device_id)
                        )
                    )
                    .where(dk.user_id.in_(part))
                )
                for user_id, device_id, key_json, name in rows:
                    wanted = query.get(user_id)
                    if wanted is None or (wanted and device_id not in wanted):
                        continue
                    found.append((user_id, device_id, key_json, name))
            sigs = await self._signatures(conn, [(u, d) for u, d, _, _ in found])
        for user_id, device_id, key_json, name in found:
            obj = _merge_signatures(jsonutil.loads(key_json), sigs.get((user_id, device_id), []))
            unsigned = dict(obj.get("unsigned") or {})
            if name is not None:
                unsigned["device_display_name"] = name
            obj["unsigned"] = unsigned
            out.setdefault(user_id, {})[device_id] = obj
        return out

    async def get_device_key(self, user_id: str, device_id: str) -> JsonDict | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(e2e_device_keys.c.key_json).where(
                        e2e_device_keys.c.user_id == user_id, e2e_device_keys.c.device_id == device_id
                    )
                )
            ).first()
        return jsonutil.loads(row[0]) if row else None

    async def _signatures(
        self, conn: Any, targets: list[tuple[str, str]]
    ) -> dict[tuple[str, str], list[Signature]]:
        out: dict[tuple[str, str], list[Signature]] = {}
        s = e2e_signatures.c
        for i in range(0, len(targets), 250):
            part = targets[i : i + 250]
            if not part:
                continue
            rows = await conn.execute(
                select(
                    s.target_user_id, s.target_key_id, s.signer_user_id, s.signer_key_id, s.signature
                ).where(tuple_(s.target_user_id, s.target_key_id).in_(part))
            )
            for r in rows:
                out.setdefault((r[0], r[1]), []).append(Signature(*r))
        return out

    async def get_cross_signing_keys(
        self,
        user_ids: Collection[str],
        viewer: str | None,
    ) -> dict[str, dict[str, JsonDict]]:
        """{user: {key_type: key}} with the stored signatures the viewer may see merged in.

        A signature is visible if its signer is the key's owner, or is the viewer (signatures
        a user makes with their user-signing key are private to them). `viewer=None` merges none.
        """
        out: dict[str, dict[str, JsonDict]] = {}
        cs = e2e_cross_signing_keys.c
        async with self.db.read() as conn:
            rows_all: list[tuple[str, str, str, str]] = []
            for part in chunks(user_ids):
                rows = await conn.execute(
                    select(cs.user_id, cs.key_type, cs.public_key, cs.key_json).where(cs.user_id.in_(part))
                )
                rows_all.extend((r[0], r[1], r[2], r[3]) for r in rows)
            sigs = await self._signatures(conn, [(u, pk) for u, _, pk, _ in rows_all]) if viewer else {}
        for user_id, key_type, public_key, key_json in rows_all:
            visible = [
                s for s in sigs.get((user_id, public_key), []) if s.signer_user_id in (user_id, viewer)
            ]
            out.setdefault(user_id, {})[key_type] = _merge_signatures(jsonutil.loads(key_json), visible)
        return out

    async def set_cross_signing_keys(self, user_id: str, keys: dict[str, tuple[str, JsonDict]]) -> None:
        """Replace the given key types ({type: (public_key, key)}); marks the user's device list changed."""
        async with self.db.write() as conn:
            for key_type, (public_key, key) in keys.items():
                stream_id = await self.db.next_stream_id()
                await conn.execute(
                    upsert(
                        conn,
                        e2e_cross_signing_keys,
                        {
                            "user_id": user_id,
                            "key_type": key_type,
                            "public_key": public_key,
                            "key_json": jsonutil.dumps(key),
                            "stream_id": stream_id,
                        },
                        ["user_id", "key_type"],
                        ["public_key", "key_json", "stream_id"],
                    )
                )
            await mark_changed(conn, self.db, [user_id])

    async def add_signatures(self, sigs: list[Signature], changed_users: Collection[str]) -> None:
        if not sigs:
            return
        async with self.db.write() as conn:
            for sig in sigs:
                await conn.execute(
                    upsert(
                        conn,
                        e2e_signatures,
                        {
                            "target_user_id": sig.target_user_id,
                            "target_key_id": sig.target_key_id,
                            "signer_user_id": sig.signer_user_id,
                            "signer_key_id": sig.signer_key_id,
                            "signature": sig.signature,
                        },
                        ["target_user_id", "target_key_id", "signer_user_id", "signer_key_id"],
                        ["signature"],
                    )
                )
            await mark_changed(conn, self.db, changed_users)

    # Device removal -----------------------------------------------------------------------

    async def delete_device_keys(self, user_id: str, device_ids: Collection[str]) -> None:
        """Forget every key of the devices and announce the change to the user's contacts."""
        if not device_ids:
            return
        async with self.db.write() as conn:
            for part in chunks(device_ids):
                await conn.execute(
                    delete(e2e_device_keys).where(
                        e2e_device_keys.c.user_id == user_id, e2e_device_keys.c.device_id.in_(part)
                    )
                )
                await conn.execute(
                    delete(e2e_one_time_keys).where(
                        e2e_one_time_keys.c.user_id == user_id, e2e_one_time_keys.c.device_id.in_(part)
                    )
                )
                await conn.execute(
                    delete(e2e_fallback_keys).where(
                        e2e_fallback_keys.c.user_id == user_id, e2e_fallback_keys.c.device_id.in_(part)
                    )
                )
                await conn.execute(
                    delete(e2e_signatures).where(
                        e2e_signatures.c.target_user_id == user_id, e2e_signatures.c.target_key_id.in_(part)
                    )
                )
            await mark_changed(conn, self.db, [user_id])
