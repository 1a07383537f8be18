"""The room authorisation rules (rooms/v10, v11, v12 "Authorisation rules";
server-server API "Auth events selection").

Role: decide whether an event is allowed given a set of state
(``auth_events``), for the event's own room version.  Used for all three
receipt checks (against the event's auth events, the state before it and the
current state) and by state resolution's iterative auth checks.

Invariants:
* ``check_auth`` either returns (allowed) or raises :class:`AuthError`.
* ``auth_events`` is keyed by ``(type, state_key)`` and should contain only
  the selection of :func:`auth_types_for_event` (pass the selection from the
  state, not the whole state: unexpected types are rejected when
  ``validate_auth_events`` is true).
* v12: the create event is never cited in ``auth_events``; it is found via
  ``create_event`` (or, as a convenience, an ``(m.room.create, "")`` entry of
  the mapping) and must be the event whose ID the room ID is derived from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.events.auth_base import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    THIRD_PARTY_INVITE,
    AuthError,
    StateEvents,
    find_create_event,
    get_named_level,
    get_power_level,
    get_required_level_for_event,
    membership_of,
    power_levels_content,
    room_creators,
)
from homeserver.events.auth_membership import SignedByCheck, check_membership
from homeserver.events.auth_power_levels import check_power_levels
from homeserver.events.hashing import room_id_from_create_event_id
from homeserver.events.identifiers import domain_of, is_valid_user_id
from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion

__all__ = [
    "AuthError",
    "auth_types_for_event",
    "check_auth",
    "get_named_level",
    "get_power_level",
    "get_required_level_for_event",
    "validate_auth_event_list",
]


def auth_types_for_event(
    room_version: RoomVersion,
    type: str,
    sender: str,
    state_key: str | None,
    content: dict[str, Any],
) -> list[tuple[str, str]]:
    """The state keys whose current events must be cited as auth events."""
    if type == CREATE:
        return []
    keys: list[tuple[str, str]] = []
    if not room_version.room_id_is_create_event_hash:
        keys.append((CREATE, ""))
    keys.append((POWER_LEVELS, ""))
    keys.append((MEMBER, sender))
    if type == MEMBER and state_key is not None:
        membership = content.get("membership")
        keys.append((MEMBER, state_key))
        if membership in ("join", "invite", "knock"):
            keys.append((JOIN_RULES, ""))
        if membership == "invite":
            tpi = content.get("third_party_invite")
            signed = tpi.get("signed") if isinstance(tpi, dict) else None
            token = signed.get("token") if isinstance(signed, dict) else None
            if isinstance(token, str):
                keys.append((THIRD_PARTY_INVITE, token))
        if membership == "join" and room_version.restricted_join_rule:
            via = content.get("join_authorised_via_users_server")
            if isinstance(via, str):
                keys.append((MEMBER, via))
    # Stable de-duplication (sender == target is common).
    return list(dict.fromkeys(keys))


def _expected_auth_types(event: Event) -> set[tuple[str, str]]:
    return set(
        auth_types_for_event(event.room_version, event.type, event.sender, event.state_key, event.content)
    )


def validate_auth_event_list(event: Event, auth_events: list[Event]) -> None:
    """Rule "Considering the event's auth_events" on the *list* of events the
    event cites (in order), which - unlike a mapping - can reveal duplicates.
    Raises AuthError."""
    cited = event.auth_event_ids
    if len(set(cited)) != len(cited):
        raise AuthError("auth_events lists the same event twice")
    seen: set[tuple[str, str]] = set()
    for auth_event in auth_events:
        if auth_event.event_id not in cited:
            raise AuthError(f"{auth_event.event_id} is not among the event's auth_events")
        if event.room_version.room_id_is_create_event_hash and auth_event.type == CREATE:
            raise AuthError("auth_events must not cite the create event in this room version")
        if auth_event.state_key is None:
            raise AuthError(f"auth event {auth_event.event_id} is not a state event")
        key = auth_event.state_key_tuple
        if key in seen:
            raise AuthError(f"duplicate auth events for {key}")
        seen.add(key)
    _validate_auth_map(event, {e.state_key_tuple: e for e in auth_events})


def _validate_auth_map(event: Event, auth_events: StateEvents) -> None:
    rv = event.room_version
    expected = _expected_auth_types(event)
    for key, auth_event in auth_events.items():
        if (auth_event.type, auth_event.state_key) != key:
            raise AuthError(f"auth event {auth_event.event_id} is filed under the wrong key {key}")
        if rv.room_id_is_create_event_hash and key == (CREATE, ""):
            # Tolerated in the mapping as a way to hand us the create event;
            # whether the event *cites* it is checked separately.
            continue
        if key not in expected:
            raise AuthError(f"unexpected auth event {auth_event.event_id} of type {key}")
        if auth_event.room_id != event.room_id:
            raise AuthError(f"auth event {auth_event.event_id} is from another room")
        if auth_event.rejected_reason is not None:
            raise AuthError(f"auth event {auth_event.event_id} was rejected")
    if len(set(event.auth_event_ids)) != len(event.auth_event_ids):
        raise AuthError("auth_events lists the same event twice")


def _check_create(event: Event) -> None:
    rv = event.room_version
    if event.prev_event_ids or event.pdu.get("prev_events"):
        raise AuthError("create event has prev_events")
    if rv.room_id_is_create_event_hash:
        if "room_id" in event.pdu:
            raise AuthError("create event must not have a room_id in this room version")
    else:
        try:
            if domain_of(event.room_id) != domain_of(event.sender):
                raise AuthError("create event's room_id domain does not match the sender's")
        except ValueError as exc:
            raise AuthError(str(exc)) from exc
    room_version = event.content.get("room_version")
    if "room_version" in event.content and (
        not isinstance(room_version, str) or room_version not in KNOWN_ROOM_VERSIONS
    ):
        raise AuthError(f"create event names unknown room version {room_version!r}")
    if not rv.implicit_room_creator and "creator" not in event.content:
        raise AuthError("create event has no content.creator")
    if rv.privileged_creators and "additional_creators" in event.content:
        extra = event.content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            raise AuthError("additional_creators must be an array of valid user IDs")


def check_auth(
    event: Event,
    auth_events: Mapping[tuple[str, str], Event],
    create_event: Event | None = None,
    *,
    validate_auth_events: bool = True,
    is_signed_by: SignedByCheck | None = None,
) -> None:
    """Apply the authorisation rules of ``event.room_version``.

    ``validate_auth_events=False`` skips the checks on the *shape* of the
    auth events (types, rooms, rejection) - state resolution uses this, since
    it authorises against resolved state rather than the cited events.
    ``is_signed_by(event, server_name)`` verifies the extra signature that
    ``join_authorised_via_users_server`` demands; without it only the presence
    of a signature from that server is checked.
    """
    try:
        _check_auth(event, auth_events, create_event, validate_auth_events, is_signed_by)
    except ValueError as exc:
        # Malformed events (no room_id, sender, ...) fail authorisation.
        raise AuthError(f"malformed event: {exc}") from exc


def _check_auth(
    event: Event,
    auth_events: Mapping[tuple[str, str], Event],
    create_event: Event | None,
    validate_auth_events: bool,
    is_signed_by: SignedByCheck | None,
) -> None:
    rv = event.room_version
    # Rule 1: m.room.create.
    if event.type == CREATE:
        _check_create(event)
        return

    create = find_create_event(auth_events, create_event)
    if create is None:
        raise AuthError("no m.room.create event available")
    if create.type != CREATE or create.state_key != "":
        raise AuthError("create_event is not an m.room.create event")
    if rv.room_id_is_create_event_hash:
        # v12 rule 2: the room ID names an accepted create event.
        if event.room_id != room_id_from_create_event_id(create.event_id):
            raise AuthError("room_id is not derived from the room's create event")
        if create.rejected_reason is not None:
            raise AuthError("the room's create event was rejected")
        if validate_auth_events and create.event_id in event.auth_event_ids:
            raise AuthError("auth_events must not cite the create event in this room version")
    elif validate_auth_events and create.event_id not in event.auth_event_ids:
        raise AuthError("auth_events do not include the m.room.create event")
    if validate_auth_events:
        _validate_auth_map(event, auth_events)

    # Rule: m.federate.
    if create.content.get("m.federate") is False:
        try:
            same_server = domain_of(event.sender) == domain_of(create.sender)
        except ValueError:
            same_server = False
        if not same_server:
            raise AuthError("room is not federated and sender is from another server")

    if event.type == MEMBER:
        check_membership(event, auth_events, create, is_signed_by)
        return

    sender = event.sender
    if membership_of(sender, auth_events) != "join":
        raise AuthError(f"sender {sender} is not joined to the room")

    pl_content = power_levels_content(auth_events)
    sender_level = get_power_level(sender, auth_events, create)
    if event.type == THIRD_PARTY_INVITE:
        if sender_level < get_named_level("invite", pl_content, 0):
            raise AuthError("sender cannot invite")
        return

    required = get_required_level_for_event(event.type, event.is_state(), pl_content)
    if required > sender_level:
        raise AuthError(f"sender needs power level {required} to send {event.type}")

    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != sender:
        raise AuthError("state_key of another user's namespace")

    if event.type == POWER_LEVELS:
        current = auth_events.get((POWER_LEVELS, ""))
        check_power_levels(
            event,
            current.content if current is not None else None,
            sender_level,
            room_creators(create) if rv.privileged_creators else set(),
        )
