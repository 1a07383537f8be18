"""Server-side key backup: backup versions and their encrypted Megolm session keys.

Session data is opaque to the server (encrypted by the client to the backup's public
key). Versions are per-user increasing integers; deleting a version soft-deletes the
version row (so its number is never reused) and removes its keys. Each version's
`etag` increases whenever its keys change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver import jsonutil
from homeserver.storage.e2ee_schema import e2e_room_keys, e2e_room_keys_versions
from homeserver.storage.engine import Database


@dataclass(slots=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: dict[str, Any]
    etag: int
    count: int


@dataclass(slots=True)
class RoomKey:
    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": self.session_data,
        }


def should_replace(old: RoomKey, new: RoomKey) -> bool:
    """The spec's rule for a session already in the backup: keep the better key."""
    if old.is_verified != new.is_verified:
        return new.is_verified
    if old.first_message_index != new.first_message_index:
        return new.first_message_index < old.first_message_index
    return new.forwarded_count < old.forwarded_count


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _current(self, conn: AsyncConnection, user_id: str) -> int | None:
        v = e2e_room_keys_versions.c
        row = (
            await conn.execute(select(func.max(v.version)).where(v.user_id == user_id, v.deleted.is_(False)))
        ).first()
        return int(row[0]) if row and row[0] is not None else None

    async def _count(self, conn: AsyncConnection, user_id: str, version: int) -> int:
        k = e2e_room_keys.c
        return int(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(e2e_room_keys)
                    .where(k.user_id == user_id, k.version == version)
                )
            ).scalar_one()
        )

    async def create_version(self, user_id: str, algorithm: str, auth_data: dict[str, Any]) -> int:
        v = e2e_room_keys_versions.c
        async with self.db.write() as conn:
            row = (await conn.execute(select(func.max(v.version)).where(v.user_id == user_id))).first()
            version = (int(row[0]) if row and row[0] is not None else 0) + 1
            await conn.execute(
                insert(e2e_room_keys_versions).values(
                    user_id=user_id,
                    version=version,
                    algorithm=algorithm,
                    auth_data=jsonutil.dumps(auth_data),
                    etag=0,
                    deleted=False,
                )
            )
        return version

    async def get_version(self, user_id: str, version: int | None) -> BackupVersion | None:
        """A live backup version (the current one when `version` is None)."""
        v = e2e_room_keys_versions.c
        async with self.db.read() as conn:
            if version is None:
                version = await self._current(conn, user_id)
                if version is None:
                    return None
            row = (
                await conn.execute(
                    select(v.algorithm, v.auth_data, v.etag).where(
                        v.user_id == user_id, v.version == version, v.deleted.is_(False)
                    )
                )
            ).first()
            if row is None:
                return None
            count = await self._count(conn, user_id, version)
        return BackupVersion(version, row[0], jsonutil.loads(row[1]), int(row[2]), count)

    async def current_version(self, user_id: str) -> int | None:
        async with self.db.read() as conn:
            return await self._current(conn, user_id)

    async def update_auth_data(self, user_id: str, version: int, auth_data: dict[str, Any]) -> bool:
        v = e2e_room_keys_versions.c
        async with self.db.write() as conn:
            res = await conn.execute(
                update(e2e_room_keys_versions)
                .where(v.user_id == user_id, v.version == version, v.deleted.is_(False))
                .values(auth_data=jsonutil.dumps(auth_data))
            )
            return bool(res.rowcount)

    async def delete_version(self, user_id: str, version: int) -> bool | None:
        """Delete a version and its keys: True if deleted now, False if it was already, None if unknown."""
        v = e2e_room_keys_versions.c
        async with self.db.write() as conn:
            row = (
                await conn.execute(select(v.deleted).where(v.user_id == user_id, v.version == version))
            ).first()
            if row is None:
                return None
            if row[0]:
                return False
            await conn.execute(
                update(e2e_room_keys_versions)
                .where(v.user_id == user_id, v.version == version)
                .values(deleted=True)
            )
            await conn.execute(
                delete(e2e_room_keys).where(
                    e2e_room_keys.c.user_id == user_id, e2e_room_keys.c.version == version
                )
            )
            return True

    async def put_keys(self, user_id: str, version: int, keys: list[RoomKey]) -> tuple[int, int] | None:
        """Store keys into `version` if it is still the current version, keeping the better
        of an existing and a new key for each session. Returns (etag, count), or None when
        `version` is not the current version (the caller reports M_WRONG_ROOM_KEYS_VERSION)."""
        k = e2e_room_keys.c
        v = e2e_room_keys_versions.c
        async with self.db.write() as conn:
            if await self._current(conn, user_id) != version:
                return None
            existing: dict[tuple[str, str], RoomKey] = {}
            rooms = sorted({key.room_id for key in keys})
            for room_id in rooms:
                rows = await conn.execute(
                    select(
                        k.room_id, k.session_id, k.first_message_index, k.forwarded_count, k.is_verified
                    ).where(k.user_id == user_id, k.version == version, k.room_id == room_id)
                )
                for r in rows:
                    existing[(r[0], r[1])] = RoomKey(r[0], r[1], int(r[2]), int(r[3]), bool(r[4]), {})
            changed = 0
            for key in keys:
                old = existing.get((key.room_id, key.session_id))
                values = {
                    "first_message_index": key.first_message_index,
                    "forwarded_count": key.forwarded_count,
                    "is_verified": key.is_verified,
                    "session_data": jsonutil.dumps(key.session_data),
                }
                if old is None:
                    await conn.execute(
                        insert(e2e_room_keys).values(
                            user_id=user_id,
                            version=version,
                            room_id=key.room_id,
                            session_id=key.session_id,
                            **values,
                        )
                    )
                elif should_replace(old, key):
                    await conn.execute(
                        update(e2e_room_keys)
                        .where(
                            k.user_id == user_id,
                            k.version == version,
                            k.room_id == key.room_id,
                            k.session_id == key.session_id,
                        )
                        .values(**values)
                    )
                else:
                    continue
                existing[(key.room_id, key.session_id)] = key
                changed += 1
            if changed:
                await conn.execute(
                    update(e2e_room_keys_versions)
                    .where(v.user_id == user_id, v.version == version)
                    .values(etag=v.etag + 1)
                )
            etag = (
                await conn.execute(select(v.etag).where(v.user_id == user_id, v.version == version))
            ).scalar_one()
            count = await self._count(conn, user_id, version)
        return int(etag), count

    async def get_keys(
        self, user_id: str, version: int, room_id: str | None, session_id: str | None
    ) -> list[RoomKey]:
        k = e2e_room_keys.c
        q = select(
            k.room_id, k.session_id, k.first_message_index, k.forwarded_count, k.is_verified, k.session_data
        ).where(k.user_id == user_id, k.version == version)
        if room_id is not None:
            q = q.where(k.room_id == room_id)
        if session_id is not None:
            q = q.where(k.session_id == session_id)
        async with self.db.read() as conn:
            rows = await conn.execute(q)
            return [RoomKey(r[0], r[1], int(r[2]), int(r[3]), bool(r[4]), jsonutil.loads(r[5])) for r in rows]

    async def delete_keys(
        self, user_id: str, version: int, room_id: str | None, session_id: str | None
    ) -> tuple[int, int] | None:
        """Delete keys of a live version; returns (etag, count), or None if the version is unknown."""
        k = e2e_room_keys.c
        v = e2e_room_keys_versions.c
        async with self.db.write() as conn:
            live = (
                await conn.execute(
                    select(v.version).where(v.user_id == user_id, v.version == version, v.deleted.is_(False))
                )
            ).first()
            if live is None:
                return None
            q = delete(e2e_room_keys).where(k.user_id == user_id, k.version == version)
            if room_id is not None:
                q = q.where(k.room_id == room_id)
            if session_id is not None:
                q = q.where(k.session_id == session_id)
            res = await conn.execute(q)
            if res.rowcount:
                await conn.execute(
                    update(e2e_room_keys_versions)
                    .where(v.user_id == user_id, v.version == version)
                    .values(etag=v.etag + 1)
                )
            etag = (
                await conn.execute(select(v.etag).where(v.user_id == user_id, v.version == version))
            ).scalar_one()
            count = await self._count(conn, user_id, version)
        return int(etag), count
