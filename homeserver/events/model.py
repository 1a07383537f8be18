"""The immutable-by-convention :class:`Event` wrapper around a PDU dict.

Role: give the rest of the server typed, version-aware accessors over a PDU
(``redacts`` location, v12 create events without ``room_id``...) without
copying the JSON.

Invariants:
* ``event.pdu`` is the federation form: no ``event_id`` key (room versions >= 3
  derive it), and for v12 create events no ``room_id`` key.  Callers must not
  mutate it; build a new Event instead.
* ``event_id`` is the reference hash of the PDU unless the constructor was
  given one explicitly (e.g. when loading from trusted storage, to skip the
  hash).
* ``rejected_reason`` is the only mutable field: storage/federation code sets
  it when the event failed authorisation; auth and state resolution read it.
"""

from __future__ import annotations

from typing import Any

from homeserver.events.hashing import compute_event_id, room_id_from_create_event_id
from homeserver.events.room_versions import RoomVersion

__all__ = ["Event", "pdu_json"]


class Event:
    __slots__ = ("_event_id", "_pdu", "_room_version", "rejected_reason")

    def __init__(self, pdu: dict[str, Any], room_version: RoomVersion, event_id: str | None = None) -> None:
        if "event_id" in pdu:
            # Stored/client copies sometimes carry the ID; the PDU must not.
            pdu = {k: v for k, v in pdu.items() if k != "event_id"}
        self._pdu = pdu
        self._room_version = room_version
        self._event_id = event_id if event_id is not None else compute_event_id(pdu, room_version)
        self.rejected_reason: str | None = None

    # -- identity -----------------------------------------------------------
    @property
    def event_id(self) -> str:
        return self._event_id

    @property
    def room_version(self) -> RoomVersion:
        return self._room_version

    @property
    def pdu(self) -> dict[str, Any]:
        return self._pdu

    @property
    def room_id(self) -> str:
        room_id = self._pdu.get("room_id")
        if isinstance(room_id, str):
            return room_id
        if self._room_version.room_id_is_create_event_hash and self.type == "m.room.create":
            # v12: the room ID *is* the create event's ID with a "!" sigil.
            return room_id_from_create_event_id(self._event_id)
        raise ValueError(f"event {self._event_id} has no room_id")

    # -- core fields ----------------------------------------------------------
    @property
    def type(self) -> str:
        value = self._pdu.get("type")
        if not isinstance(value, str):
            raise ValueError(f"event {self._event_id} has no valid type")
        return value

    @property
    def state_key(self) -> str | None:
        value = self._pdu.get("state_key")
        return value if isinstance(value, str) else None

    @property
    def sender(self) -> str:
        value = self._pdu.get("sender")
        if not isinstance(value, str):
            raise ValueError(f"event {self._event_id} has no valid sender")
        return value

    @property
    def content(self) -> dict[str, Any]:
        value = self._pdu.get("content")
        return value if isinstance(value, dict) else {}

    @property
    def depth(self) -> int:
        value = self._pdu.get("depth", 0)
        return value if isinstance(value, int) else 0

    @property
    def origin_server_ts(self) -> int:
        value = self._pdu.get("origin_server_ts", 0)
        return value if isinstance(value, int) else 0

    @property
    def prev_event_ids(self) -> list[str]:
        return _id_list(self._pdu.get("prev_events"))

    @property
    def auth_event_ids(self) -> list[str]:
        return _id_list(self._pdu.get("auth_events"))

    @property
    def unsigned(self) -> dict[str, Any]:
        value = self._pdu.get("unsigned")
        return value if isinstance(value, dict) else {}

    @property
    def signatures(self) -> dict[str, Any]:
        value = self._pdu.get("signatures")
        return value if isinstance(value, dict) else {}

    @property
    def hashes(self) -> dict[str, Any]:
        value = self._pdu.get("hashes")
        return value if isinstance(value, dict) else {}

    @property
    def redacts(self) -> str | None:
        """ID of the event this redaction targets.  v11+ moved it into
        content; we read content first and fall back to the legacy top-level
        key so events from either era are understood."""
        if self.type != "m.room.redaction":
            return None
        value = self.content.get("redacts")
        if isinstance(value, str):
            return value
        value = self._pdu.get("redacts")
        return value if isinstance(value, str) else None

    @property
    def membership(self) -> str | None:
        if self.type != "m.room.member":
            return None
        value = self.content.get("membership")
        return value if isinstance(value, str) else None

    def is_state(self) -> bool:
        return isinstance(self._pdu.get("state_key"), str)

    @property
    def state_key_tuple(self) -> tuple[str, str]:
        state_key = self.state_key
        if state_key is None:
            raise ValueError(f"event {self._event_id} is not a state event")
        return (self.type, state_key)

    # -- dunder -------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"<Event {self._event_id} type={self._pdu.get('type')!r} "
            f"state_key={self._pdu.get('state_key')!r} sender={self._pdu.get('sender')!r}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self._event_id == other._event_id

    def __hash__(self) -> int:
        return hash(self._event_id)


def _id_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def pdu_json(event: Event) -> dict[str, Any]:
    """The PDU as sent over federation (a shallow copy; no ``event_id``; no
    ``room_id`` on v12 create events)."""
    return dict(event.pdu)
