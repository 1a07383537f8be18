"""Format checks for PDUs received over federation (server-server API:
"Checks performed on receipt of a PDU", step 1; rooms: event format; size
limits from the client-server "Size limits" section).

Role: reject structurally invalid events *before* any signature, hash or auth
work, so later stages can rely on field types.

Invariants:
* Raises :class:`EventFormatError` (a ValueError) and never mutates the PDU.
* Only checks that every server applies identically (types, presence, size,
  canonical JSON, v12 room ID rules) - semantic checks belong to the auth
  rules, where a failure means "rejected", not "dropped".
"""

from __future__ import annotations

from typing import Any

from homeserver.events.canonical import CanonicalJsonError, canonical_json, check_canonical
from homeserver.events.identifiers import domain_of, is_v12_room_id, is_valid_user_id
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion

__all__ = ["MAX_PDU_SIZE", "EventFormatError", "required_signature_servers", "validate_pdu"]

MAX_PDU_SIZE = 65536
_MAX_ID_BYTES = 255


class EventFormatError(ValueError):
    """The PDU does not follow the event format of its room version."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise EventFormatError(message)


def _short_string(pdu: dict[str, Any], key: str) -> str:
    value = pdu.get(key)
    if not isinstance(value, str):
        raise EventFormatError(f"{key} must be a string")
    _require(len(value.encode("utf-8", "surrogatepass")) <= _MAX_ID_BYTES, f"{key} is too long")
    return value


def _event_id_list(pdu: dict[str, Any], key: str) -> list[str]:
    value = pdu.get(key)
    if not isinstance(value, list):
        raise EventFormatError(f"{key} must be an array")
    for item in value:
        _require(isinstance(item, str) and item.startswith("$"), f"{key} must contain event IDs")
    return value


def validate_pdu(
    pdu: dict[str, Any], room_version: RoomVersion, *, canonical_size: int | None = None
) -> None:
    """Raise EventFormatError unless ``pdu`` is a well-formed PDU.

    ``canonical_size`` is for callers that have already checked the PDU's canonical
    JSON (as :func:`homeserver.events.builder.build_event` does for strict room
    versions) and measured it: the canonical checks are then not repeated.
    """
    _require(isinstance(pdu, dict), "PDU must be an object")
    if canonical_size is None:
        if room_version.strict_canonical_json:
            try:
                check_canonical(pdu)
            except CanonicalJsonError as exc:
                raise EventFormatError(str(exc)) from exc
        try:
            canonical_size = len(canonical_json(pdu))
        except CanonicalJsonError as exc:
            raise EventFormatError(str(exc)) from exc
    _require(canonical_size <= MAX_PDU_SIZE, "PDU exceeds 65536 bytes")

    event_type = _short_string(pdu, "type")
    sender = _short_string(pdu, "sender")
    _require(is_valid_user_id(sender), "sender is not a valid user ID")
    if "state_key" in pdu:
        _short_string(pdu, "state_key")
    _require(isinstance(pdu.get("content"), dict), "content must be an object")
    depth = pdu.get("depth")
    _require(isinstance(depth, int) and not isinstance(depth, bool) and 0 <= depth <= 2**63 - 1, "bad depth")
    ts = pdu.get("origin_server_ts")
    _require(isinstance(ts, int) and not isinstance(ts, bool), "origin_server_ts must be an integer")
    hashes = pdu.get("hashes")
    _require(isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str), "hashes.sha256 is required")
    signatures = pdu.get("signatures")
    _require(
        isinstance(signatures, dict) and all(isinstance(v, dict) for v in signatures.values()),
        "signatures must be an object of objects",
    )
    if "unsigned" in pdu:
        _require(isinstance(pdu["unsigned"], dict), "unsigned must be an object")
    prev_events = _event_id_list(pdu, "prev_events")
    auth_events = _event_id_list(pdu, "auth_events")

    is_create = event_type == "m.room.create"
    if room_version.room_id_is_create_event_hash and is_create:
        _require("room_id" not in pdu, "a room version 12 create event must not have a room_id")
        _require(not prev_events and not auth_events, "create events have no prev/auth events")
        return
    room_id = _short_string(pdu, "room_id")
    _require(room_id.startswith("!"), "room_id must start with '!'")
    if room_version.room_id_is_create_event_hash:
        _require(is_v12_room_id(room_id), "room_id must be the create event's reference hash")
        # The create event is implied by the room ID and must not be cited.
        _require("$" + room_id[1:] not in auth_events, "auth_events must not contain the create event")
    else:
        _require(":" in room_id, "room_id must have a server name")


def required_signature_servers(event: Event) -> set[str]:
    """Servers whose valid signature an event must carry (server-server API:
    "Validating hashes and signatures on received events"; v8+ restricted
    joins).

    * The sender's server - except for invites made from a third-party
      invite, which another server may relay (the auth rules then require the
      sender to match the ``m.room.third_party_invite`` sender).
    * For joins naming ``join_authorised_via_users_server``, that user's server.
    """
    servers: set[str] = set()
    content = event.content
    is_3pid_invite = event.membership == "invite" and "third_party_invite" in content
    if not is_3pid_invite:
        servers.add(domain_of(event.sender))
    authoriser = content.get("join_authorised_via_users_server")
    if event.room_version.restricted_join_rule and event.membership == "join" and isinstance(authoriser, str):
        try:
            servers.add(domain_of(authoriser))
        except ValueError:
            pass  # not a user ID: the auth rules reject the join
    return servers
