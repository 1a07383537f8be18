"""Build, hash and sign new local events (server-server API: "Adding hashes
and signatures to outgoing events").

Role: the only place local events are minted.  The order is fixed by the spec
and matters: content hash first (over the full event), then the signature
(over the redacted event, which includes the hash), then the event ID (the
reference hash, which includes the hash but not the signature).

Invariants:
* v12 create events carry no ``room_id``; every other event must be given one.
* ``redacts`` goes top-level for room versions without the v11 redaction
  rules and into ``content`` for v11+.
* For room versions that still use ``content.creator`` (v10) it is filled in
  from ``sender`` when missing, since the auth rules reject a create without it.
* Strict-canonical room versions get a :class:`CanonicalJsonError` here rather
  than an event other servers would drop.
"""

from __future__ import annotations

import hashlib
from typing import Any

from signedjson.types import SigningKey
from unpaddedbase64 import encode_base64

from homeserver.events.canonical import canonical_json_checked, check_canonical
from homeserver.events.hashing import compute_content_hash
from homeserver.events.model import Event
from homeserver.events.redaction import redact
from homeserver.events.room_versions import RoomVersion
from homeserver.events.signing import sign_event

__all__ = ["build_event"]


def build_event(
    *,
    room_version: RoomVersion,
    room_id: str | None,
    type: str,
    sender: str,
    content: dict[str, Any],
    state_key: str | None = None,
    prev_event_ids: list[str],
    auth_event_ids: list[str],
    depth: int,
    origin_server_ts: int,
    server_name: str,
    signing_key: SigningKey,
    redacts: str | None = None,
    unsigned: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Event:
    """Return a fully hashed and signed :class:`Event`. `extra`: more top-level fields
    (covered by the hashes and the signature), such as MSC4354's `msc4354_sticky`."""
    is_create = type == "m.room.create"
    if room_version.room_id_is_create_event_hash and is_create:
        if room_id is not None:
            raise ValueError("room version 12 create events must not have a room_id")
    elif room_id is None:
        raise ValueError("room_id is required (only v12 create events derive it)")
    elif room_version.room_id_is_create_event_hash and "$" + room_id[1:] in auth_event_ids:
        raise ValueError("room version 12 events must not cite the create event in auth_events")

    content = dict(content)
    if is_create and not room_version.implicit_room_creator:
        content.setdefault("creator", sender)

    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": content,
        "depth": depth,
        "origin_server_ts": origin_server_ts,
        "prev_events": list(prev_event_ids),
        "auth_events": list(auth_event_ids),
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if state_key is not None:
        pdu["state_key"] = state_key
    if extra:
        pdu.update({k: v for k, v in extra.items() if k not in pdu})
    if redacts is not None:
        if room_version.updated_redaction_rules:
            content["redacts"] = redacts
        else:
            pdu["redacts"] = redacts
    if room_version.strict_canonical_json:
        check_canonical(pdu)
        if unsigned is not None:
            check_canonical(unsigned)
        return _build_checked(pdu, room_version, server_name, signing_key, unsigned)

    pdu["hashes"] = {"sha256": compute_content_hash(pdu)}
    pdu = sign_event(pdu, server_name, signing_key, room_version)
    if unsigned is not None:
        # unsigned is outside both hashes, so it can be attached last.
        pdu["unsigned"] = dict(unsigned)
    return Event(pdu, room_version)


def _build_checked(
    pdu: dict[str, Any],
    room_version: RoomVersion,
    server_name: str,
    signing_key: SigningKey,
    unsigned: dict[str, Any] | None,
) -> Event:
    """The same steps for a PDU that passed check_canonical, encoding each form once.

    The signature and the reference hash cover the same bytes: the redacted event
    without ``signatures`` and ``unsigned`` (and ``age_ts``, which a new PDU lacks), so
    they are encoded once, signed and hashed into the event ID.
    """
    pdu["hashes"] = {"sha256": encode_base64(hashlib.sha256(canonical_json_checked(pdu)).digest())}
    pruned = redact(pdu, room_version)
    pruned.pop("unsigned", None)
    pruned.pop("signatures", None)
    signed_bytes = canonical_json_checked(pruned)
    signature = encode_base64(signing_key.sign(signed_bytes).signature)
    pdu["signatures"] = {server_name: {f"{signing_key.alg}:{signing_key.version}": signature}}
    if unsigned is not None:
        pdu["unsigned"] = dict(unsigned)
    event_id = "$" + encode_base64(hashlib.sha256(signed_bytes).digest(), urlsafe=True)
    return Event(pdu, room_version, event_id)
