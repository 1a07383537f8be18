"""Checks on a received PDU before it may touch anything (server-server API "Checks performed
on receipt of a PDU", steps 1-3): format, signatures, content hash.

A PDU that fails the format or signature check is dropped (`PduError`); one whose content
hash does not match is kept in its redacted form, as the spec requires.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.keys import KeyFetchError, KeyRing
from homeserver.events import (
    CanonicalJsonError,
    Event,
    SignatureError,
    canonical_json,
    check_canonical,
    check_content_hash,
    redact,
    verify_event_signature,
)
from homeserver.events.identifiers import domain_of, is_valid_user_id
from homeserver.events.room_versions import RoomVersion

MAX_PDU_BYTES = 65_536
POLICY_SERVER_KEY_ID = "ed25519:policy_server"
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10


class PduError(ValueError):
    """The PDU is invalid and must be dropped."""


def _str_list(value: Any, name: str, limit: int) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PduError(f"{name} must be a list of event IDs")
    if len(value) > limit:
        raise PduError(f"too many {name}")


def parse_pdu(pdu: Any, room_version: RoomVersion) -> Event:
    """Validate the event format and the content hash; return the event (redacted if its
    hash did not match)."""
    if not isinstance(pdu, dict):
        raise PduError("PDU is not an object")
    pdu = {k: v for k, v in pdu.items() if k != "event_id"}
    for key, kind in (
        ("type", str),
        ("sender", str),
        ("content", dict),
        ("depth", int),
        ("origin_server_ts", int),
        ("hashes", dict),
        ("signatures", dict),
    ):
        if not isinstance(pdu.get(key), kind) or isinstance(pdu.get(key), bool):
            raise PduError(f"PDU field {key} is missing or has the wrong type")
    is_v12_create = room_version.room_id_is_create_event_hash and pdu["type"] == "m.room.create"
    if not is_v12_create and not isinstance(pdu.get("room_id"), str):
        raise PduError("PDU has no room_id")
    _str_list(pdu.get("prev_events"), "prev_events", MAX_PREV_EVENTS)
    _str_list(pdu.get("auth_events"), "auth_events", MAX_AUTH_EVENTS)
    if "state_key" in pdu and not isinstance(pdu["state_key"], str):
        raise PduError("state_key must be a string")
    if not is_valid_user_id(pdu["sender"]):
        raise PduError("sender is not a valid user ID")
    for key in ("type", "state_key", "sender", "room_id"):
        value = pdu.get(key)
        if isinstance(value, str) and len(value.encode()) > 255:
            raise PduError(f"{key} is too long")
    if pdu["depth"] < 0:
        raise PduError("negative depth")
    try:
        if room_version.strict_canonical_json:
            check_canonical(pdu)
        size = len(canonical_json(pdu))
    except CanonicalJsonError as e:
        raise PduError(f"PDU is not canonical JSON: {e}") from None
    if size > MAX_PDU_BYTES:
        raise PduError("PDU is too large")
    if not check_content_hash(pdu):
        # Treat it as the redacted copy the sender evidently had.
        pdu = redact(pdu, room_version)
    return Event(pdu, room_version)


def required_signers(event: Event) -> set[str]:
    servers = {domain_of(event.sender)}
    if (
        event.type == "m.room.member"
        and event.membership == "join"
        and event.room_version.restricted_join_rule
    ):
        via = event.content.get("join_authorised_via_users_server")
        if isinstance(via, str) and is_valid_user_id(via):
            servers.add(domain_of(via))
    return servers


async def verify_signatures(event: Event, keyring: KeyRing) -> None:
    """Every required server signed the (redacted) event with a key valid at its
    origin_server_ts. Raises PduError."""

    async def check(server: str) -> None:
        sigs = event.signatures.get(server)
        if not isinstance(sigs, dict) or not sigs:
            raise PduError(f"event is not signed by {server}")
        errors = []
        for key_id in sigs:
            # A Policy Server's signature is checked against the room's state, not against
            # published keys (bridge.policy); the spec says to skip it here, even when the
            # Policy Server is the sender's server.
            if not key_id.startswith("ed25519:") or key_id == POLICY_SERVER_KEY_ID:
                continue
            try:
                vk = await keyring.get_verify_key(server, key_id, event.origin_server_ts)
                verify_event_signature(event.pdu, server, vk, event.room_version)
                return
            except (KeyFetchError, SignatureError, ValueError) as e:
                errors.append(f"{key_id}: {e}")
        raise PduError(f"no valid signature from {server}: {'; '.join(errors)[:300]}")

    await asyncio.gather(*(check(s) for s in sorted(required_signers(event))))
