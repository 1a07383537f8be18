"""Server-side key backup (/room_keys): versions and encrypted session keys.

The server cannot read the backed-up keys; it enforces the spec's rules: keys may only
be written to the current version (else 403 M_WRONG_ROOM_KEYS_VERSION with
`current_version`), an existing session key is replaced only by a better one, and every
change bumps the version's `etag`.
"""

from __future__ import annotations

from typing import Any

from homeserver import jsonutil
from homeserver.errors import Codes, MatrixError, bad_json, invalid_param, missing_param, not_found
from homeserver.storage.key_backup import BackupVersion, KeyBackupStore, RoomKey
from homeserver.types import JsonDict

MAX_AUTH_DATA_BYTES = 64 * 1024
MAX_SESSION_DATA_BYTES = 64 * 1024
MAX_KEYS_PER_REQUEST = 100_000


def parse_version(raw: str | None) -> int | None:
    """A backup version string as an int; None if it cannot name any version we issued."""
    if raw is None:
        raise missing_param("version")
    if not raw.isdigit() or len(raw) > 12:
        return None
    return int(raw)


def parse_version_body(body: JsonDict) -> tuple[str, JsonDict]:
    algorithm = body.get("algorithm")
    if algorithm is None:
        raise missing_param("algorithm")
    if not isinstance(algorithm, str) or not algorithm or len(algorithm) > 255:
        raise bad_json("algorithm must be a string")
    auth_data = body.get("auth_data")
    if auth_data is None:
        raise missing_param("auth_data")
    if not isinstance(auth_data, dict):
        raise bad_json("auth_data must be an object")
    if len(jsonutil.dumpb(auth_data)) > MAX_AUTH_DATA_BYTES:
        raise MatrixError(400, Codes.TOO_LARGE, "auth_data is too large")
    return algorithm, auth_data


def _int_field(data: JsonDict, name: str) -> int:
    value = data.get(name)
    if value is None:
        raise missing_param(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_json(f"{name} must be a non-negative integer")
    return value


def parse_key_data(room_id: str, session_id: str, data: Any) -> RoomKey:
    if not isinstance(data, dict):
        raise bad_json("Key backup data must be an object")
    is_verified = data.get("is_verified")
    if is_verified is None:
        raise missing_param("is_verified")
    if not isinstance(is_verified, bool):
        raise bad_json("is_verified must be a boolean")
    session_data = data.get("session_data")
    if session_data is None:
        raise missing_param("session_data")
    if not isinstance(session_data, dict):
        raise bad_json("session_data must be an object")
    if len(jsonutil.dumpb(session_data)) > MAX_SESSION_DATA_BYTES:
        raise MatrixError(400, Codes.TOO_LARGE, "session_data is too large")
    if not room_id or len(room_id) > 255 or not session_id or len(session_id) > 255:
        raise bad_json("Invalid room or session ID")
    return RoomKey(
        room_id,
        session_id,
        _int_field(data, "first_message_index"),
        _int_field(data, "forwarded_count"),
        is_verified,
        session_data,
    )


def parse_sessions(room_id: str, body: Any) -> list[RoomKey]:
    if not isinstance(body, dict) or not isinstance(body.get("sessions"), dict):
        raise bad_json("Expected an object with 'sessions'")
    return [parse_key_data(room_id, sid, data) for sid, data in body["sessions"].items()]


def parse_rooms(body: JsonDict) -> list[RoomKey]:
    rooms = body.get("rooms")
    if not isinstance(rooms, dict):
        raise bad_json("Expected an object with 'rooms'")
    keys: list[RoomKey] = []
    for room_id, room in rooms.items():
        keys.extend(parse_sessions(room_id, room))
        if len(keys) > MAX_KEYS_PER_REQUEST:
            raise MatrixError(400, Codes.TOO_LARGE, "Too many keys in one request")
    return keys


def version_json(v: BackupVersion) -> JsonDict:
    return {
        "algorithm": v.algorithm,
        "auth_data": v.auth_data,
        "count": v.count,
        "etag": str(v.etag),
        "version": str(v.version),
    }


class KeyBackupHandler:
    def __init__(self, store: KeyBackupStore) -> None:
        self.store = store

    async def create_version(self, user_id: str, algorithm: str, auth_data: JsonDict) -> JsonDict:
        version = await self.store.create_version(user_id, algorithm, auth_data)
        return {"version": str(version)}

    async def get_version(self, user_id: str, raw_version: str | None) -> JsonDict:
        version = None if raw_version is None else parse_version(raw_version)
        if raw_version is not None and version is None:
            raise not_found("Unknown backup version")
        info = await self.store.get_version(user_id, version)
        if info is None:
            raise not_found("No current backup version" if raw_version is None else "Unknown backup version")
        return version_json(info)

    async def update_version(self, user_id: str, raw_version: str, body: JsonDict) -> None:
        algorithm, auth_data = parse_version_body(body)
        version = parse_version(raw_version)
        body_version = body.get("version")
        if body_version is not None and body_version != raw_version:
            raise invalid_param("version in the body does not match the version in the path")
        info = await self.store.get_version(user_id, version) if version is not None else None
        if info is None or version is None:
            raise not_found("Unknown backup version")
        if info.algorithm != algorithm:
            raise invalid_param("The algorithm of a backup cannot be changed")
        if not await self.store.update_auth_data(user_id, version, auth_data):
            raise not_found("Unknown backup version")

    async def delete_version(self, user_id: str, raw_version: str) -> None:
        version = parse_version(raw_version)
        deleted = await self.store.delete_version(user_id, version) if version is not None else None
        if deleted is None:
            raise not_found("Unknown backup version")

    async def put_keys(self, user_id: str, raw_version: str | None, keys: list[RoomKey]) -> JsonDict:
        version = parse_version(raw_version)
        current = await self.store.current_version(user_id)
        if current is None:
            raise not_found("No current backup version")
        result = await self.store.put_keys(user_id, version, keys) if version is not None else None
        if result is None:
            current = await self.store.current_version(user_id)
            raise MatrixError(
                403,
                Codes.WRONG_ROOM_KEYS_VERSION,
                "Wrong backup version",
                current_version=str(current) if current is not None else None,
            )
        etag, count = result
        return {"etag": str(etag), "count": count}

    async def _live_version(self, user_id: str, raw_version: str | None) -> int:
        version = parse_version(raw_version)
        if version is None or await self.store.get_version(user_id, version) is None:
            raise not_found("Unknown backup version")
        return version

    async def get_keys(
        self, user_id: str, raw_version: str | None, room_id: str | None, session_id: str | None
    ) -> JsonDict:
        version = await self._live_version(user_id, raw_version)
        keys = await self.store.get_keys(user_id, version, room_id, session_id)
        if session_id is not None:
            if not keys:
                raise not_found("No backed-up key for this session")
            return keys[0].to_json()
        if room_id is not None:
            return {"sessions": {k.session_id: k.to_json() for k in keys}}
        rooms: dict[str, JsonDict] = {}
        for k in keys:
            rooms.setdefault(k.room_id, {"sessions": {}})["sessions"][k.session_id] = k.to_json()
        return {"rooms": rooms}

    async def delete_keys(
        self, user_id: str, raw_version: str | None, room_id: str | None, session_id: str | None
    ) -> JsonDict:
        version = parse_version(raw_version)
        result = (
            await self.store.delete_keys(user_id, version, room_id, session_id)
            if version is not None
            else None
        )
        if result is None:
            raise not_found("Unknown backup version")
        etag, count = result
        return {"etag": str(etag), "count": count}
