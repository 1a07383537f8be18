"""X-Matrix request authentication (server-server API "Request Authentication").

Pure functions: build the signed JSON of a request, produce the `Authorization` header
for an outbound request, and parse an inbound header. Verifying an inbound request needs
the origin's keys, so that step lives in `bridge.server` with the key ring.

Invariant: the `uri` that is signed is exactly the path and query sent on the wire
(percent-encoded as sent), and the receiver verifies against the raw path it received.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from signedjson.types import SigningKey

from homeserver.events import sign_json_object, verify_key_id


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    origin: str
    destination: str | None
    key_id: str
    signature: str


def request_json(method: str, uri: str, origin: str, destination: str, content: Any | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def authorization_header(
    method: str,
    uri: str,
    origin: str,
    destination: str,
    content: Any | None,
    signing_key: SigningKey,
) -> str:
    signed = sign_json_object(request_json(method, uri, origin, destination, content), origin, signing_key)
    key_id = verify_key_id(signing_key)
    sig = signed["signatures"][origin][key_id]
    return f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="{sig}"'


# name=value, the value quoted (with backslash escapes) or a bare token (colons allowed).
_PARAM = re.compile(r'\s*([A-Za-z0-9_\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s"]*))\s*(?:,|$)')


class XMatrixParseError(ValueError):
    pass


def parse_authorization(header: str) -> XMatrixAuth:
    """Parse `X-Matrix origin=...,destination=...,key=...,sig=...` (RFC 9110 auth params)."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "x-matrix":
        raise XMatrixParseError("not an X-Matrix authorization header")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise XMatrixParseError("malformed X-Matrix parameters")
        name = m.group(1).lower()
        value = m.group(2)
        value = re.sub(r"\\(.)", r"\1", value) if value is not None else m.group(3)
        params[name] = value
        pos = m.end()
    origin, key, sig = params.get("origin"), params.get("key"), params.get("sig")
    if not origin or not key or not sig:
        raise XMatrixParseError("X-Matrix header lacks origin, key or sig")
    return XMatrixAuth(origin=origin, destination=params.get("destination"), key_id=key, signature=sig)
