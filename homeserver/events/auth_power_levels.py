"""Authorisation rules for ``m.room.power_levels`` events (rule "If type is
m.room.power_levels": rule 9 in v10/v11, rule 10 in v12).

Role: validate the shape of new power levels and ensure nobody grants or
revokes power they do not hold.

Invariants:
* In room versions that enforce integer power levels (v10+), every level must
  be a JSON integer - not a bool, not a numeric string.
* A sender may always lower their *own* level; any other change needs the
  sender's level to exceed (users) or reach (everything else) both the old
  and the new value.
* v12: creators may not appear in ``users`` at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.events.auth_base import AuthError, parse_level
from homeserver.events.identifiers import is_valid_user_id

if TYPE_CHECKING:
    from homeserver.events.model import Event

__all__ = ["check_power_levels"]

_SCALAR_KEYS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")
_MAP_KEYS = ("events", "notifications")


def _is_level(value: object, strict: bool) -> bool:
    if strict:
        return isinstance(value, int) and not isinstance(value, bool)
    return parse_level(value) is not None


def _validate_shape(content: dict[str, Any], strict: bool) -> None:
    for key in _SCALAR_KEYS:
        if key in content and not _is_level(content[key], strict):
            raise AuthError(f"power_levels.{key} is not an integer")
    for key in _MAP_KEYS:
        if key in content:
            value = content[key]
            if not isinstance(value, dict) or not all(_is_level(v, strict) for v in value.values()):
                raise AuthError(f"power_levels.{key} must map to integers")
    if "users" in content:
        users = content["users"]
        if not isinstance(users, dict):
            raise AuthError("power_levels.users must be an object")
        for user_id, level in users.items():
            if not is_valid_user_id(user_id):
                raise AuthError(f"power_levels.users has invalid user ID {user_id!r}")
            if not _is_level(level, strict):
                raise AuthError(f"power_levels.users[{user_id!r}] is not an integer")


def _levels(mapping: object) -> dict[str, int]:
    if not isinstance(mapping, dict):
        return {}
    out: dict[str, int] = {}
    for key, value in mapping.items():
        level = parse_level(value)
        if level is not None:
            out[key] = level
    return out


def check_power_levels(
    event: Event,
    current: dict[str, Any] | None,
    sender_level: int | float,
    creators: set[str],
) -> None:
    """Raise AuthError if ``event`` (a power levels event) may not replace the
    power levels ``current`` (None when the room has none yet)."""
    new = event.content
    _validate_shape(new, event.room_version.enforce_int_power_levels)

    if creators:
        users = new.get("users")
        if isinstance(users, dict) and creators.intersection(users):
            raise AuthError("room creators cannot be listed in power_levels.users")

    if current is None:
        return

    for key in _SCALAR_KEYS:
        old_level = parse_level(current.get(key))
        new_level = parse_level(new.get(key))
        if old_level == new_level:
            continue
        if old_level is not None and old_level > sender_level:
            raise AuthError(f"cannot change {key} from a level above your own")
        if new_level is not None and new_level > sender_level:
            raise AuthError(f"cannot set {key} above your own level")

    for key in _MAP_KEYS:
        old_map, new_map = _levels(current.get(key)), _levels(new.get(key))
        for name in old_map.keys() | new_map.keys():
            old_level, new_level = old_map.get(name), new_map.get(name)
            if old_level == new_level:
                continue
            # Changed or removed: the old value must not exceed the sender.
            if old_level is not None and old_level > sender_level:
                raise AuthError(f"cannot change {key}[{name!r}] from a level above your own")
            # Added or changed: the new value must not exceed the sender.
            if new_level is not None and new_level > sender_level:
                raise AuthError(f"cannot set {key}[{name!r}] above your own level")

    old_users, new_users = _levels(current.get("users")), _levels(new.get("users"))
    for user_id in old_users.keys() | new_users.keys():
        old_level, new_level = old_users.get(user_id), new_users.get(user_id)
        if old_level == new_level:
            continue
        if old_level is not None and user_id != event.sender and old_level >= sender_level:
            raise AuthError(f"cannot change the level of {user_id}, who is not below you")
        if new_level is not None and new_level > sender_level:
            raise AuthError(f"cannot give {user_id} a level above your own")
