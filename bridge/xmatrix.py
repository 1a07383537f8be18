"""X-Matrix request authentication (server-server API "Request Authentication").

Pure functions: build the signed JSON of a request, produce the `Authorization` header
for an outbound request, and parse an inbound header. Verifying an inbound request needs
the origin's keys, so that step lives in `bridge.server` with the key ring.

Invariant: the `uri` that is signed is exactly the path and query sent on the wire
(percent-encoded as sent), and the receiver verifies against the raw path it received.

Request signatures use plain canonical JSON (``canonicaljson``, floats allowed, as Synapse
signs and verifies requests), not the strict PDU rules of room versions 6+: a transaction
may legitimately carry floats (events of rooms v1-5, EDUs). The strict rules stay with the
PDU checks. Verification also accepts a signature over the integral-float-normalised form
(what Sotto signed before), so older Sotto peers keep working.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from homeserver.events import SignatureError, verify_key_id
from homeserver.events.canonical import CanonicalJsonError, normalize_json


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
    signed = sign_request_json(request_json(method, uri, origin, destination, content), origin, signing_key)
    key_id = verify_key_id(signing_key)
    sig = signed["signatures"][origin][key_id]
    return f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="{sig}"'


def sign_request_json(obj: dict[str, Any], origin: str, signing_key: SigningKey) -> dict[str, Any]:
    """A copy of the request JSON ``obj`` signed by ``origin`` over plain canonical JSON."""
    return sign_json(copy.deepcopy(obj), origin, signing_key)


def verify_request_signature(obj: dict[str, Any], origin: str, verify_key: VerifyKey) -> None:
    """Raise SignatureError unless the request JSON ``obj`` carries ``origin``'s valid signature.

    Plain canonical JSON first (floats kept as sent); then, only if it differs, the form with
    integral floats written as integers.
    """
    try:
        verify_signed_json(obj, origin, verify_key)
        return
    except SignatureVerifyException as exc:
        first: Exception = exc
    except (TypeError, AttributeError, ValueError) as exc:
        raise SignatureError(f"request cannot be verified: {exc}") from exc
    try:
        normalised = normalize_json(obj)
    except CanonicalJsonError:
        normalised = obj
    if normalised is not obj:
        try:
            verify_signed_json(normalised, origin, verify_key)
            return
        except (SignatureVerifyException, TypeError, AttributeError, ValueError):
            pass
    raise SignatureError(str(first)) from first


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
