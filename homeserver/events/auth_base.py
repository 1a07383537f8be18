"""Shared vocabulary of the authorisation rules: the error type, event type
constants, room creators and power level lookups (server-server API:
"Definitions"; m.room.power_levels schema).

Role: helpers used by :mod:`homeserver.events.auth`, the membership rules and
state resolution (which orders events by their sender's power).

Invariants:
* Lookups never raise on malformed content: absent or ill-typed values fall
  back to the spec defaults (malformed power levels are rejected when the
  power levels event itself is authorised, so state never holds them in
  v10+ rooms).
* In room versions with privileged creators (v12) every creator's level is
  ``float('inf')``, whatever ``m.room.power_levels`` says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from homeserver.events.model import Event

__all__ = [
    "CREATE",
    "JOIN_RULES",
    "MEMBER",
    "POWER_LEVELS",
    "THIRD_PARTY_INVITE",
    "AuthError",
    "StateEvents",
    "find_create_event",
    "get_named_level",
    "get_power_level",
    "get_required_level_for_event",
    "membership_of",
    "room_creators",
]

CREATE: Final = "m.room.create"
MEMBER: Final = "m.room.member"
JOIN_RULES: Final = "m.room.join_rules"
POWER_LEVELS: Final = "m.room.power_levels"
THIRD_PARTY_INVITE: Final = "m.room.third_party_invite"
REDACTION: Final = "m.room.redaction"

StateEvents = Mapping[tuple[str, str], "Event"]

_INT_STRING_RE = re.compile(r"^[+-]?[0-9]+$")


class AuthError(Exception):
    """The event is not allowed by the authorisation rules."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_level(value: object) -> int | None:
    """Interpret a power level value.  Integers (not bools) are taken as is;
    numeric strings are tolerated as older room versions allowed them;
    anything else is None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_STRING_RE.match(value.strip()):
        return int(value.strip())
    return None


def as_level(value: object, default: int) -> int:
    level = parse_level(value)
    return default if level is None else level


def get_named_level(name: str, power_levels_content: dict[str, Any], default: int) -> int:
    """``invite``/``kick``/``ban``/``redact``/... level with its default."""
    return as_level(power_levels_content.get(name), default)


def get_required_level_for_event(type: str, is_state: bool, power_levels_content: dict[str, Any]) -> int:
    """Level needed to send an event of ``type``: ``events[type]`` if set,
    else ``state_default`` (50) or ``events_default`` (0)."""
    events = power_levels_content.get("events")
    if isinstance(events, dict):
        level = parse_level(events.get(type))
        if level is not None:
            return level
    if is_state:
        return get_named_level("state_default", power_levels_content, 50)
    return get_named_level("events_default", power_levels_content, 0)


def find_create_event(auth_events: StateEvents, create_event: Event | None) -> Event | None:
    if create_event is not None:
        return create_event
    return auth_events.get((CREATE, ""))


def room_creators(create_event: Event) -> set[str]:
    """Users that count as room creators.

    v11+: the create event's sender; v10: ``content.creator``; v12 adds the
    ``additional_creators`` (validated when the create event is authorised).
    """
    rv = create_event.room_version
    if rv.implicit_room_creator:
        creators = {create_event.sender}
    else:
        creator = create_event.content.get("creator")
        creators = {creator} if isinstance(creator, str) else set()
    if rv.privileged_creators:
        extra = create_event.content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(u for u in extra if isinstance(u, str))
    return creators


def get_power_level(user_id: str, auth_events: StateEvents, create_event: Event | None) -> int | float:
    """Power level of ``user_id`` given the relevant state.

    ``float('inf')`` for creators in privileged-creator rooms (v12); without a
    power levels event, the creator has 100 and everyone else 0.
    """
    create = find_create_event(auth_events, create_event)
    if create is not None and create.room_version.privileged_creators:
        if user_id in room_creators(create):
            return float("inf")
    pl_event = auth_events.get((POWER_LEVELS, ""))
    if pl_event is not None:
        content = pl_event.content
        users = content.get("users")
        if isinstance(users, dict) and user_id in users:
            return as_level(users[user_id], 0)
        return get_named_level("users_default", content, 0)
    if create is not None and not create.room_version.privileged_creators:
        if user_id in room_creators(create):
            return 100
    return 0


def power_levels_content(auth_events: StateEvents) -> dict[str, Any]:
    pl_event = auth_events.get((POWER_LEVELS, ""))
    return pl_event.content if pl_event is not None else {}


def membership_of(user_id: str, auth_events: StateEvents) -> str:
    """Current membership of ``user_id``; ``"leave"`` when there is none."""
    member = auth_events.get((MEMBER, user_id))
    if member is None:
        return "leave"
    membership = member.content.get("membership")
    return membership if isinstance(membership, str) else "leave"
