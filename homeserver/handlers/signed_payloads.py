"""Small JSON payloads the browser carries for us (a cookie, a hidden form field), signed so
that it cannot change them. Every worker derives the same key from the server's signing key,
one key per purpose, so a payload made for one purpose is worthless for another."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from homeserver import jsonutil


class PayloadSigner:
    def __init__(self, signing_key: bytes, purpose: str) -> None:
        self._key = hashlib.sha256(f"sotto {purpose}\x00".encode() + signing_key).digest()

    def _mac(self, payload: bytes) -> str:
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def encode(self, data: dict[str, Any]) -> str:
        payload = base64.urlsafe_b64encode(jsonutil.dumpb(data)).rstrip(b"=")
        return payload.decode("ascii") + "." + self._mac(payload)

    def decode(self, value: str | None) -> dict[str, Any] | None:
        """The payload, or None if it is missing, malformed or not signed by us."""
        if not value or "." not in value:
            return None
        payload, _, mac = value.partition(".")
        expected = self._mac(payload.encode("ascii", "replace")).encode()
        if not hmac.compare_digest(expected, mac.encode("utf-8", "surrogateescape")):
            return None
        try:
            data = jsonutil.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
