"""Identifier grammar helpers (appendices: "Identifier Grammar").

Role: the few syntactic checks the event core needs (auth rules validate user
IDs in power levels and ``additional_creators``; v12 room IDs are hashes).

Invariants: checks are *permissive* where the spec demands tolerance - user ID
localparts follow the historical grammar (any code point except ``:`` and
NUL, possibly empty) because events from such users must still be accepted
over federation.
"""

from __future__ import annotations

import re

__all__ = [
    "domain_of",
    "is_v12_room_id",
    "is_valid_server_name",
    "is_valid_user_id",
]

# server_name = hostname / IPv4address / "[" IPv6address "]", optional :port.
_SERVER_NAME_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.\-]{1,255})(?::[0-9]{1,5})?$")
# 32-byte sha256 in URL-safe unpadded base64 is exactly 43 characters.
_V12_ROOM_ID_RE = re.compile(r"^![0-9A-Za-z_\-]{43}$")


def is_valid_server_name(name: str) -> bool:
    return bool(_SERVER_NAME_RE.match(name))


def is_valid_user_id(user_id: object) -> bool:
    """``@localpart:server_name`` with the historical (lenient) localpart."""
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        return False
    if len(user_id.encode("utf-8", "surrogatepass")) > 255:
        return False
    localpart, sep, server = user_id[1:].partition(":")
    if not sep or "\x00" in localpart:
        return False
    return is_valid_server_name(server)


def domain_of(identifier: str) -> str:
    """The domain part of ``&localpart:domain`` (everything after the first
    colon).  Raises ValueError when there is none (e.g. v12 room IDs)."""
    _, sep, domain = identifier.partition(":")
    if not sep:
        raise ValueError(f"identifier {identifier!r} has no domain")
    return domain


def is_v12_room_id(room_id: object) -> bool:
    """Room ID of the hash form used by room version 12."""
    return isinstance(room_id, str) and bool(_V12_ROOM_ID_RE.match(room_id))
