"""Room version records (spec: rooms/v10, v11, v12).

Role: every version-dependent branch in the event core reads a flag from a
:class:`RoomVersion` instead of comparing version strings, so adding a version
means adding a record, not hunting for ``if version == "11"``.

Invariants:
* Records are immutable and compared by identity/equality of all fields.
* Only versions whose rules are implemented exactly are listed in
  :data:`KNOWN_ROOM_VERSIONS` (10, 11, 12).  Older versions differ in event ID
  format, auth rules and redaction and are deliberately absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_ROOM_VERSION",
    "KNOWN_ROOM_VERSIONS",
    "RoomVersion",
    "RoomVersions",
    "UnsupportedRoomVersionError",
    "get_room_version",
]

# Event ID formats, numbered as in Synapse for familiarity: 3 = "$" + URL-safe
# unpadded base64 of the reference hash (room versions 4 and later).
EVENT_ID_FORMAT_URLSAFE_REFERENCE_HASH: Final = 3

STATE_RES_V2: Final = "v2"
STATE_RES_V2_1: Final = "v2.1"


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    event_id_format: int
    state_res: str
    # PDUs must be strict canonical JSON (no floats, safe-range ints). v6+.
    strict_canonical_json: bool
    # join_rule "knock" and membership "knock" exist. v7+.
    knock_join_rule: bool
    # join_rule "restricted" and join_authorised_via_users_server. v8+.
    restricted_join_rule: bool
    # join_rule "knock_restricted". v10+.
    knock_restricted_join_rule: bool
    # Power level values must be JSON integers (no numeric strings). v10+.
    enforce_int_power_levels: bool
    # The creator is the create event's sender; content.creator unused. v11+.
    implicit_room_creator: bool
    # MSC2176 redaction rules. v11+.
    updated_redaction_rules: bool
    # Room ID is "!" + reference hash of the create event; the create event
    # carries no room_id and is never cited in auth_events. v12+.
    room_id_is_create_event_hash: bool
    # Creators (create sender + additional_creators) have infinite power. v12+.
    privileged_creators: bool
    msc3389_relation_redactions: bool = False
    # Redaction keeps content.join_authorised_via_users_server of members. v9+.
    restricted_join_rule_fix: bool = True
    stable: bool = True


class RoomVersions:
    """Namespace of the known room version records."""

    V10: Final = RoomVersion(
        identifier="10",
        event_id_format=EVENT_ID_FORMAT_URLSAFE_REFERENCE_HASH,
        state_res=STATE_RES_V2,
        strict_canonical_json=True,
        knock_join_rule=True,
        restricted_join_rule=True,
        knock_restricted_join_rule=True,
        enforce_int_power_levels=True,
        implicit_room_creator=False,
        updated_redaction_rules=False,
        room_id_is_create_event_hash=False,
        privileged_creators=False,
    )
    V11: Final = RoomVersion(
        identifier="11",
        event_id_format=EVENT_ID_FORMAT_URLSAFE_REFERENCE_HASH,
        state_res=STATE_RES_V2,
        strict_canonical_json=True,
        knock_join_rule=True,
        restricted_join_rule=True,
        knock_restricted_join_rule=True,
        enforce_int_power_levels=True,
        implicit_room_creator=True,
        updated_redaction_rules=True,
        room_id_is_create_event_hash=False,
        privileged_creators=False,
    )
    V12: Final = RoomVersion(
        identifier="12",
        event_id_format=EVENT_ID_FORMAT_URLSAFE_REFERENCE_HASH,
        state_res=STATE_RES_V2_1,
        strict_canonical_json=True,
        knock_join_rule=True,
        restricted_join_rule=True,
        knock_restricted_join_rule=True,
        enforce_int_power_levels=True,
        implicit_room_creator=True,
        updated_redaction_rules=True,
        room_id_is_create_event_hash=True,
        privileged_creators=True,
    )


KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v for v in (RoomVersions.V10, RoomVersions.V11, RoomVersions.V12)
}

DEFAULT_ROOM_VERSION: str = "12"


class UnsupportedRoomVersionError(ValueError):
    """The room version identifier is not one this server implements."""

    def __init__(self, identifier: str) -> None:
        super().__init__(f"Unsupported room version: {identifier!r}")
        self.identifier = identifier


def get_room_version(identifier: str) -> RoomVersion:
    """Look up a room version record; raise UnsupportedRoomVersionError if unknown."""
    try:
        return KNOWN_ROOM_VERSIONS[identifier]
    except (KeyError, TypeError):
        raise UnsupportedRoomVersionError(str(identifier)) from None
