"""Sotto's pure event core: canonical JSON, room versions, hashing, redaction,
signing, the :class:`Event` model, event building and the authorisation rules.

Nothing in this package performs I/O; state resolution (which needs to fetch
events) lives in :mod:`homeserver.state`.
"""

from homeserver.events.auth import (
    AuthError,
    auth_types_for_event,
    check_auth,
    get_named_level,
    get_power_level,
    get_required_level_for_event,
    validate_auth_event_list,
)
from homeserver.events.builder import build_event
from homeserver.events.canonical import CanonicalJsonError, canonical_json, check_canonical
from homeserver.events.hashing import (
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    room_id_from_create_event_id,
)
from homeserver.events.model import Event, pdu_json
from homeserver.events.redaction import redact
from homeserver.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    RoomVersion,
    RoomVersions,
    UnsupportedRoomVersionError,
    get_room_version,
)
from homeserver.events.signing import (
    SignatureError,
    decode_signing_key,
    decode_verify_key,
    encode_signing_key,
    encode_verify_key,
    generate_signing_key,
    sign_event,
    sign_json_object,
    verify_event_signature,
    verify_json_signature,
    verify_key_id,
)
from homeserver.events.validation import EventFormatError, required_signature_servers, validate_pdu

__all__ = [
    "DEFAULT_ROOM_VERSION",
    "KNOWN_ROOM_VERSIONS",
    "AuthError",
    "CanonicalJsonError",
    "Event",
    "EventFormatError",
    "RoomVersion",
    "RoomVersions",
    "SignatureError",
    "UnsupportedRoomVersionError",
    "auth_types_for_event",
    "build_event",
    "canonical_json",
    "check_auth",
    "check_canonical",
    "check_content_hash",
    "compute_content_hash",
    "compute_event_id",
    "compute_reference_hash",
    "decode_signing_key",
    "decode_verify_key",
    "encode_signing_key",
    "encode_verify_key",
    "generate_signing_key",
    "get_named_level",
    "get_power_level",
    "get_required_level_for_event",
    "get_room_version",
    "pdu_json",
    "redact",
    "required_signature_servers",
    "room_id_from_create_event_id",
    "sign_event",
    "sign_json_object",
    "validate_auth_event_list",
    "validate_pdu",
    "verify_event_signature",
    "verify_json_signature",
    "verify_key_id",
]
