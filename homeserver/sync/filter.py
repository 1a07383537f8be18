"""The parts of a client's sync filter that the server applies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 100


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


@dataclass(slots=True)
class EventFilter:
    types: list[str] | None = None
    not_types: list[str] | None = None
    senders: list[str] | None = None
    not_senders: list[str] | None = None
    limit: int | None = None

    @classmethod
    def parse(cls, raw: Any) -> EventFilter:
        if not isinstance(raw, dict):
            return cls()
        limit = raw.get("limit")
        return cls(
            types=_str_list(raw.get("types")),
            not_types=_str_list(raw.get("not_types")),
            senders=_str_list(raw.get("senders")),
            not_senders=_str_list(raw.get("not_senders")),
            limit=limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None,
        )

    def allows(self, type_: str, sender: str) -> bool:
        if self.not_types and _matches(type_, self.not_types):
            return False
        if self.types is not None and not _matches(type_, self.types):
            return False
        if self.not_senders and sender in self.not_senders:
            return False
        return not (self.senders is not None and sender not in self.senders)


def matches_type(f: EventFilter, type_: str) -> bool:
    """Whether `f` can allow some event of this type (whatever its sender)."""
    if f.not_types and _matches(type_, f.not_types):
        return False
    return f.types is None or _matches(type_, f.types)


def _matches(value: str, patterns: list[str]) -> bool:
    for p in patterns:
        if p == value or (p.endswith("*") and value.startswith(p[:-1])):
            return True
    return False


@dataclass(slots=True)
class SyncFilter:
    timeline: EventFilter
    state: EventFilter
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    include_leave: bool = False
    rooms: list[str] | None = None
    not_rooms: list[str] | None = None
    account_data: EventFilter | None = None
    presence: EventFilter | None = None

    @property
    def timeline_limit(self) -> int:
        return min(self.timeline.limit or DEFAULT_TIMELINE_LIMIT, MAX_TIMELINE_LIMIT)

    def allows_room(self, room_id: str) -> bool:
        if self.not_rooms and room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    @classmethod
    def parse(cls, raw: Any) -> SyncFilter:
        if not isinstance(raw, dict):
            raw = {}
        room_raw = raw.get("room")
        room: dict[str, Any] = room_raw if isinstance(room_raw, dict) else {}
        state_value = room.get("state")
        state_raw: dict[str, Any] = state_value if isinstance(state_value, dict) else {}
        return cls(
            timeline=EventFilter.parse(room.get("timeline")),
            state=EventFilter.parse(state_raw),
            lazy_load_members=bool(state_raw.get("lazy_load_members")),
            include_redundant_members=bool(state_raw.get("include_redundant_members")),
            include_leave=bool(room.get("include_leave")),
            rooms=_str_list(room.get("rooms")),
            not_rooms=_str_list(room.get("not_rooms")),
            account_data=EventFilter.parse(raw.get("account_data")) if "account_data" in raw else None,
            presence=EventFilter.parse(raw.get("presence")) if "presence" in raw else None,
        )
