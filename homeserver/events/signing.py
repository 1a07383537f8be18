"""Signing keys, JSON signatures and event signatures (appendices: "Signing
JSON"; server-server API: "Signing Events").

Role: thin, typed wrappers over ``signedjson``/PyNaCl.  No crypto is
implemented here; this module only decides *what bytes* get signed.

Invariants:
* Functions never mutate their inputs: ``signedjson.sign.sign_json`` mutates
  the dict it is given (including the nested ``signatures`` object), so we
  always hand it a fresh copy.
* Event signatures cover the *redacted* event (so redacted copies still
  verify) and the content hash inside it (so the full content is bound too).
* Data is normalised (integral floats -> ints) before signing/verifying so the
  signed bytes equal :func:`homeserver.events.canonical.canonical_json`.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import nacl.signing
import signedjson.key
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from homeserver.events.canonical import CanonicalJsonError, normalize_json
from homeserver.events.redaction import redact
from homeserver.events.room_versions import RoomVersion

__all__ = [
    "SignatureError",
    "SigningKey",
    "VerifyKey",
    "decode_signing_key",
    "decode_verify_key",
    "encode_signing_key",
    "encode_verify_key",
    "generate_signing_key",
    "sign_event",
    "sign_json_object",
    "verify_event_signature",
    "verify_json_signature",
    "verify_key_id",
]


class SignatureError(ValueError):
    """A required signature is missing or does not verify."""


def generate_signing_key(version: str) -> SigningKey:
    """A fresh ed25519 signing key with key ID ``ed25519:<version>``."""
    return signedjson.key.generate_signing_key(version)


def encode_signing_key(key: SigningKey) -> str:
    """``"ed25519 <version> <base64 seed>"`` (one line of a signing key file,
    the format of ``signedjson.key.write_signing_keys``, without newline)."""
    return f"{key.alg} {key.version} {signedjson.key.encode_signing_key_base64(key)}"


def decode_signing_key(line: str) -> SigningKey:
    """Inverse of :func:`encode_signing_key`; raises ValueError if malformed."""
    parts = line.strip().split()
    if len(parts) != 3:
        raise ValueError("signing key line must be '<alg> <version> <base64>'")
    alg, version, key_b64 = parts
    try:
        return signedjson.key.decode_signing_key_base64(alg, version, key_b64)
    except ValueError:
        raise
    except Exception as exc:  # bad base64 / wrong seed length from nacl
        raise ValueError(f"invalid signing key: {exc}") from exc


def verify_key_id(key: SigningKey | VerifyKey) -> str:
    """Key identifier ``"<alg>:<version>"``, e.g. ``"ed25519:a_bcd"``."""
    return f"{key.alg}:{key.version}"


def _as_verify_key(key: SigningKey | VerifyKey) -> VerifyKey:
    # The signedjson key types are Protocols, so test the concrete nacl class.
    if isinstance(key, nacl.signing.SigningKey):
        return signedjson.key.get_verify_key(cast(SigningKey, key))
    return cast(VerifyKey, key)


def encode_verify_key(key: SigningKey | VerifyKey) -> str:
    """Unpadded standard base64 of the public key (of a signing or verify key)."""
    return signedjson.key.encode_verify_key_base64(_as_verify_key(key))


def decode_verify_key(key_id: str, key_base64: str) -> VerifyKey:
    """Build a VerifyKey from ``"ed25519:<version>"`` and its base64 public key."""
    alg, _, version = key_id.partition(":")
    if not version:
        raise ValueError(f"malformed key ID {key_id!r}")
    try:
        return signedjson.key.decode_verify_key_base64(alg, version, key_base64)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"invalid verify key: {exc}") from exc


def sign_json_object(obj: dict[str, Any], signing_name: str, signing_key: SigningKey) -> dict[str, Any]:
    """Return a copy of ``obj`` with a signature from ``signing_name`` added.

    Existing signatures are preserved; ``unsigned`` is excluded from the signed
    bytes and carried over unchanged.
    """
    work = dict(normalize_json(obj))
    # sign_json mutates work["signatures"] in place: give it a private copy.
    work["signatures"] = copy.deepcopy(obj.get("signatures", {}))
    return sign_json(work, signing_name, signing_key)


def verify_json_signature(obj: dict[str, Any], signing_name: str, verify_key: VerifyKey) -> None:
    """Raise SignatureError unless ``obj`` carries a valid signature by
    ``signing_name`` under ``verify_key``'s key ID."""
    try:
        verify_signed_json(normalize_json(obj), signing_name, verify_key)
    except SignatureVerifyException as exc:
        raise SignatureError(str(exc)) from exc
    except (TypeError, AttributeError) as exc:
        # e.g. "signatures": {"example.org": "not-an-object"}
        raise SignatureError(f"malformed signatures: {exc}") from exc
    except CanonicalJsonError as exc:
        raise SignatureError(f"object cannot be canonicalised: {exc}") from exc


def sign_event(
    event: dict[str, Any],
    server_name: str,
    signing_key: SigningKey,
    room_version: RoomVersion,
) -> dict[str, Any]:
    """Return a copy of ``event`` with ``server_name``'s signature merged into
    ``signatures``.  The signature is computed over the redacted event, so the
    caller must already have set ``hashes`` (see the builder)."""
    pruned = redact(event, room_version)
    pruned.pop("unsigned", None)
    signed = sign_json_object(pruned, server_name, signing_key)
    signatures = copy.deepcopy(event.get("signatures", {}))
    for name, sigs in signed["signatures"].items():
        signatures.setdefault(name, {}).update(sigs)
    result = dict(event)
    result["signatures"] = signatures
    return result


def verify_event_signature(
    event: dict[str, Any],
    server_name: str,
    verify_key: VerifyKey,
    room_version: RoomVersion,
) -> None:
    """Raise SignatureError unless ``event`` is validly signed by
    ``server_name`` with ``verify_key`` (checked on the redacted form, so it
    succeeds for both full and redacted copies)."""
    pruned = redact(event, room_version)
    if not isinstance(pruned.get("signatures"), dict):
        raise SignatureError("event has no signatures")
    verify_json_signature(pruned, server_name, verify_key)
