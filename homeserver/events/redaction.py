"""The redaction algorithm (spec: rooms/fragments/v9-redactions, v11-redactions).

Role: produce the pruned form of an event.  The pruned form is what reference
hashes (event IDs) and event signatures cover, so this function must match
every other server bit-for-bit: a mistake here changes event IDs.

Invariants:
* Pure: the input dict is never mutated; the result shares no mutable
  containers with the input at the top level or in ``content`` (nested values
  kept verbatim, e.g. ``users`` of power levels, are shared - callers that
  mutate the result must copy them).
* ``unsigned`` is always dropped.  Adding ``unsigned.redacted_because`` for
  clients is the caller's job.
* Only the keys listed by the room version survive at the top level; missing
  keys are simply absent (never added as null).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.events.room_versions import RoomVersion

__all__ = ["redact"]

_TOP_LEVEL_KEYS_V11 = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
# v11 (MSC2176) stopped protecting these legacy top-level keys.
_TOP_LEVEL_KEYS_PRE_V11 = _TOP_LEVEL_KEYS_V11 | {"prev_state", "origin", "membership"}

_POWER_LEVEL_KEYS = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)


def _kept_content(event_type: object, content: Mapping[str, Any], rv: RoomVersion) -> dict[str, Any]:
    new: dict[str, Any] = {}

    def keep(*keys: str) -> None:
        for key in keys:
            if key in content:
                new[key] = content[key]

    if event_type == "m.room.member":
        keep("membership")
        if rv.restricted_join_rule_fix:
            keep("join_authorised_via_users_server")
        if rv.updated_redaction_rules:
            tpi = content.get("third_party_invite")
            # Only the signed block survives; like Synapse we keep an (empty)
            # third_party_invite object when it was an object without
            # "signed", so our reference hashes agree with theirs.
            if isinstance(tpi, Mapping):
                new["third_party_invite"] = {"signed": tpi["signed"]} if "signed" in tpi else {}
    elif event_type == "m.room.create":
        if rv.updated_redaction_rules:
            # v11: the create event keeps its entire content.
            new = dict(content)
        elif not rv.implicit_room_creator:
            keep("creator")
    elif event_type == "m.room.join_rules":
        keep("join_rule")
        if rv.restricted_join_rule:
            keep("allow")
    elif event_type == "m.room.power_levels":
        keep(*_POWER_LEVEL_KEYS)
        if rv.updated_redaction_rules:
            keep("invite")
    elif event_type == "m.room.history_visibility":
        keep("history_visibility")
    elif event_type == "m.room.redaction" and rv.updated_redaction_rules:
        keep("redacts")

    if rv.msc3389_relation_redactions:
        relates_to = content.get("m.relates_to")
        if isinstance(relates_to, Mapping):
            kept = {k: relates_to[k] for k in ("rel_type", "event_id") if k in relates_to}
            if kept:
                new["m.relates_to"] = kept
    return new


def redact(event: dict[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """Return a new dict: ``event`` pruned by ``room_version``'s redaction rules."""
    allowed = _TOP_LEVEL_KEYS_V11 if room_version.updated_redaction_rules else _TOP_LEVEL_KEYS_PRE_V11
    pruned = {key: value for key, value in event.items() if key in allowed}
    content = event.get("content")
    if not isinstance(content, Mapping):
        content = {}
    pruned["content"] = _kept_content(event.get("type"), content, room_version)
    return pruned
