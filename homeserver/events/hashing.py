"""Content hashes, reference hashes and event IDs (server-server API: "Signing
Events"; rooms/fragments/v4-event-ids).

Role: the two hashes that bind an event together.
* The *content hash* covers the full event (minus ``unsigned``, ``signatures``
  and ``hashes``); it lives in ``hashes.sha256`` and is itself covered by the
  signature, so a redacted copy still verifies.
* The *reference hash* covers the redacted event (minus ``signatures`` and
  ``unsigned``) and is the event ID for room versions >= 4.

Invariants: inputs are never mutated; all byte encodings go through
:func:`homeserver.events.canonical.canonical_json`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from unpaddedbase64 import decode_base64, encode_base64

from homeserver.events.canonical import canonical_json
from homeserver.events.redaction import redact
from homeserver.events.room_versions import RoomVersion

__all__ = [
    "check_content_hash",
    "compute_content_hash",
    "compute_event_id",
    "compute_reference_hash",
    "room_id_from_create_event_id",
]


def _content_hash_bytes(event: dict[str, Any]) -> bytes:
    stripped = {k: v for k, v in event.items() if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(canonical_json(stripped)).digest()


def compute_content_hash(event: dict[str, Any]) -> str:
    """sha256 content hash of ``event`` as unpadded standard base64."""
    return encode_base64(_content_hash_bytes(event))


def check_content_hash(event: dict[str, Any]) -> bool:
    """True iff ``event['hashes']['sha256']`` matches the event's content.

    A False result means the event must be treated as its redacted form (the
    spec assumes we were handed a redacted copy), not that it is invalid.
    """
    hashes = event.get("hashes")
    if not isinstance(hashes, dict):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    try:
        claimed_bytes = decode_base64(claimed)
    except Exception:  # binascii.Error / ValueError on malformed base64
        return False
    return hmac.compare_digest(claimed_bytes, _content_hash_bytes(event))


def compute_reference_hash(event: dict[str, Any], room_version: RoomVersion) -> bytes:
    """Raw sha256 reference hash of ``event`` for ``room_version``."""
    pruned = redact(event, room_version)
    # Redaction already drops unsigned; age_ts is a legacy top-level key that
    # some old servers put outside unsigned.  Neither may affect the hash.
    for key in ("signatures", "unsigned", "age_ts"):
        pruned.pop(key, None)
    return hashlib.sha256(canonical_json(pruned)).digest()


def compute_event_id(event: dict[str, Any], room_version: RoomVersion) -> str:
    """Event ID: ``$`` + URL-safe unpadded base64 of the reference hash.

    The PDU of a v3+ room carries no ``event_id``; if one is present (e.g. a
    stored copy) it is ignored, since an ID cannot hash itself.
    """
    if "event_id" in event:
        event = {k: v for k, v in event.items() if k != "event_id"}
    return "$" + encode_base64(compute_reference_hash(event, room_version), urlsafe=True)


def room_id_from_create_event_id(create_event_id: str) -> str:
    """Room ID of a v12+ room: the create event's ID with ``!`` as sigil."""
    if not create_event_id.startswith("$"):
        raise ValueError(f"not an event ID: {create_event_id!r}")
    return "!" + create_event_id[1:]
