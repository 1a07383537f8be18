"""Sliding sync (MSC4186, "simplified sliding sync") request bodies, checked and combined.

The wire format is the one Synapse and the clients (matrix-rust-sdk, matrix-js-sdk) speak at
`/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`: `required_state` is a list of
`[type, state_key]` pairs where `*` matches anything, and for `m.room.member` the state key
`$LAZY` asks for the members the timeline needs and `$ME` means the syncing user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.errors import bad_json

WILDCARD = "*"
LAZY = "$LAZY"
ME = "$ME"
MEMBER = "m.room.member"
# As Synapse: more would make one response unbounded.
MAX_TIMELINE_LIMIT = 1000
MAX_LISTS = 100
StateKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RequiredState:
    """Which state events to return, as a set of `[type, state_key]` pairs."""

    pairs: frozenset[StateKey] = frozenset()

    @property
    def lazy_members(self) -> bool:
        return (MEMBER, LAZY) in self.pairs

    @property
    def wants_everything(self) -> bool:
        return (WILDCARD, WILDCARD) in self.pairs

    def needs_full_state(self) -> bool:
        """Whether matching needs the room's whole state (a wildcard state key or type)."""
        return any(t == WILDCARD or k == WILDCARD for t, k in self.pairs)

    def keys(self, user_id: str) -> list[StateKey]:
        """The exact state keys asked for (no wildcards), `$ME` resolved."""
        return [
            (t, user_id if k == ME else k)
            for t, k in self.pairs
            if t != WILDCARD and k not in (WILDCARD, LAZY)
        ]

    def matches(self, key: StateKey, user_id: str) -> bool:
        t, k = key
        for want_t, want_k in self.pairs:
            if want_t != WILDCARD and want_t != t:
                continue
            if want_k == WILDCARD or want_k == k or (want_k == ME and k == user_id):
                return True
        return False

    def union(self, other: RequiredState) -> RequiredState:
        return RequiredState(self.pairs | other.pairs)


@dataclass(frozen=True, slots=True)
class RoomConfig:
    timeline_limit: int = 0
    required_state: RequiredState = field(default_factory=RequiredState)

    def combine(self, other: RoomConfig) -> RoomConfig:
        """The superset of two configs (a room matched by several lists or subscriptions)."""
        return RoomConfig(
            max(self.timeline_limit, other.timeline_limit),
            self.required_state.union(other.required_state),
        )


@dataclass(frozen=True, slots=True)
class ListFilters:
    is_dm: bool | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    # None: no filter; a list may hold None, which stands for rooms without a type.
    room_types: tuple[str | None, ...] | None = None
    not_room_types: tuple[str | None, ...] = ()
    tags: tuple[str, ...] = ()
    not_tags: tuple[str, ...] = ()
    spaces: tuple[str, ...] = ()
    room_name_like: str | None = None


@dataclass(frozen=True, slots=True)
class ListConfig:
    room: RoomConfig
    # Inclusive [start, end] index ranges into the filtered, sorted list; None: every room.
    ranges: tuple[tuple[int, int], ...] | None
    filters: ListFilters


@dataclass(frozen=True, slots=True)
class SlidingRequest:
    conn_id: str
    lists: dict[str, ListConfig]
    subscriptions: dict[str, RoomConfig]
    extensions: dict[str, dict[str, Any]]


def parse_request(body: Mapping[str, Any]) -> SlidingRequest:
    conn_id = body.get("conn_id") or ""
    if not isinstance(conn_id, str):
        raise bad_json("conn_id must be a string")
    lists_json = _object(body, "lists")
    if len(lists_json) > MAX_LISTS:
        raise bad_json(f"At most {MAX_LISTS} lists")
    lists = {name: _list(name, value) for name, value in lists_json.items()}
    subscriptions = {
        room_id: _room_config(f"room_subscriptions.{room_id}", value)
        for room_id, value in _object(body, "room_subscriptions").items()
    }
    extensions = {
        name: value for name, value in _object(body, "extensions").items() if isinstance(value, dict)
    }
    return SlidingRequest(conn_id, lists, subscriptions, extensions)


def _object(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_json(f"{key} must be an object")
    return value


def _room_config(where: str, value: Any) -> RoomConfig:
    if not isinstance(value, dict):
        raise bad_json(f"{where} must be an object")
    limit = value.get("timeline_limit", 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_TIMELINE_LIMIT:
        raise bad_json(f"{where}.timeline_limit must be an integer from 0 to {MAX_TIMELINE_LIMIT}")
    pairs = value.get("required_state", [])
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs
    ):
        raise bad_json(f"{where}.required_state must be a list of [type, state_key] pairs")
    return RoomConfig(limit, RequiredState(frozenset((p[0], p[1]) for p in pairs)))


def _list(name: str, value: Any) -> ListConfig:
    room = _room_config(f"lists.{name}", value)
    ranges: tuple[tuple[int, int], ...] | None = None
    raw = value.get("ranges")
    if raw is not None:
        if not isinstance(raw, list) or not all(_is_range(r) for r in raw):
            raise bad_json(f"lists.{name}.ranges must be a list of [start, end] with 0 <= start <= end")
        ranges = tuple((r[0], r[1]) for r in raw)
    if value.get("slow_get_all_rooms") is True:
        ranges = None
    return ListConfig(room, ranges, _filters(name, value.get("filters")))


def _is_range(r: Any) -> bool:
    return (
        isinstance(r, list)
        and len(r) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
        and 0 <= r[0] <= r[1]
    )


def _filters(name: str, raw: Any) -> ListFilters:
    if raw is None:
        return ListFilters()
    if not isinstance(raw, dict):
        raise bad_json(f"lists.{name}.filters must be an object")

    def flag(key: str) -> bool | None:
        v = raw.get(key)
        if v is not None and not isinstance(v, bool):
            raise bad_json(f"lists.{name}.filters.{key} must be a boolean")
        return v

    def strings(key: str, nullable: bool = False) -> tuple[Any, ...] | None:
        v = raw.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) or (nullable and x is None) for x in v):
            raise bad_json(f"lists.{name}.filters.{key} must be a list of strings")
        return tuple(v)

    like = raw.get("room_name_like")
    if like is not None and not isinstance(like, str):
        raise bad_json(f"lists.{name}.filters.room_name_like must be a string")
    return ListFilters(
        is_dm=flag("is_dm"),
        is_encrypted=flag("is_encrypted"),
        # Clients have sent both spellings.
        is_invite=flag("is_invite") if "is_invite" in raw else flag("is_invited"),
        room_types=strings("room_types", nullable=True),
        not_room_types=strings("not_room_types", nullable=True) or (),
        tags=strings("tags") or (),
        not_tags=strings("not_tags") or (),
        spaces=strings("spaces") or (),
        room_name_like=like,
    )


def in_ranges(index: int, ranges: Iterable[tuple[int, int]] | None) -> bool:
    return ranges is None or any(start <= index <= end for start, end in ranges)
