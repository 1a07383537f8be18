"""One SAS (`m.sas.v1`) exchange between this device and another, without any I/O.

The caller moves the contents this class builds (start/accept/key/mac) and feeds it the other
side's; `envelope` holds what ties every content to its flow (`m.relates_to` in a room,
`transaction_id` over to-device) and is merged into each one.

No cryptography is written here. nio's `Sas` does the Curve25519 agreement (vodozemac) and
builds the info string the SAS bytes are derived from; the bytes and the MACs are vodozemac's
`EstablishedSas`; the commitment is SHA-256 from hashlib. What this module adds over nio's
`Sas`, which only talks to itself:

- emoji straight from vodozemac's indices (nio's `get_emoji()` maps them wrongly);
- the commitment is unpadded base64, as the spec and every other implementation have it
  (nio sends hex, which matrix-rust-sdk rejects with `m.mismatched_commitment`);
- MAC methods by name: `hkdf-hmac-sha256.v2` is vodozemac's `calculate_mac`, the deprecated
  `hkdf-hmac-sha256` its `calculate_mac_invalid_base64` (libolm's encoding bug). nio labels the
  former with the latter's name, so other clients' MACs would not match;
- any set of keys in the MAC (the master cross-signing key besides the device key), and a MAC
  check that reports which of the expected keys it proved.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from canonicaljson import encode_canonical_json
from nio.crypto import OlmDevice, Sas
from unpaddedbase64 import encode_base64

SAS_METHOD = "m.sas.v1"
KEY_AGREEMENT = "curve25519-hkdf-sha256"
HASH = "sha256"
MAC_V2 = "hkdf-hmac-sha256.v2"
MAC_LEGACY = "hkdf-hmac-sha256"
MAC_METHODS = (MAC_V2, MAC_LEGACY)  # preference order: v2 whenever both sides have it
SAS_STRINGS = ("decimal", "emoji")


class SasCancel(Exception):
    """The exchange must be cancelled with this spec code (`m.key_mismatch`, …)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class Stage(Enum):
    OFFERED = "offered"  # we sent start, waiting for accept
    ACCEPTED = "accepted"  # accept sent or received, waiting for keys
    KEYS_EXCHANGED = "keys"  # shared secret established: SAS can be shown
    CONFIRMED = "confirmed"  # our user said the SAS matches: MACs may flow


@dataclass(frozen=True, slots=True)
class Own:
    user_id: str
    device_id: str
    ed25519: str


def commitment(public_key: str, start_content: Mapping[str, Any]) -> str:
    """Unpadded base64 SHA-256 of the public key and the canonical JSON start content (spec)."""
    digest = hashlib.sha256(public_key.encode() + encode_canonical_json(dict(start_content))).digest()
    return encode_base64(digest)


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


class SasSession:
    def __init__(
        self,
        own: Own,
        other: OlmDevice,
        flow_id: str,
        envelope: Mapping[str, Any],
        start_content: dict[str, Any],
        we_started: bool,
    ) -> None:
        self.own = own
        self.other = other
        self.flow_id = flow_id
        self.envelope = dict(envelope)
        self.start_content = start_content
        self.we_started = we_started
        # nio's Sas holds the ephemeral key pair and derives emoji/decimals (key agreement v2).
        self._sas = Sas(own.user_id, own.device_id, own.ed25519, other, flow_id)
        self._sas.we_started_it = we_started
        self._sas.chosen_key_agreement = KEY_AGREEMENT
        self.mac_method = ""
        self.sas_strings: list[str] = []
        self.their_commitment = ""
        self.stage = Stage.OFFERED

    # -- negotiation ------------------------------------------------------------------------

    @classmethod
    def offer(cls, own: Own, other: OlmDevice, flow_id: str, envelope: Mapping[str, Any]) -> SasSession:
        """We start: `start_content` is what to send."""
        content = {
            "from_device": own.device_id,
            "method": SAS_METHOD,
            "key_agreement_protocols": [KEY_AGREEMENT],
            "hashes": [HASH],
            "message_authentication_codes": list(MAC_METHODS),
            "short_authentication_string": list(SAS_STRINGS),
            **envelope,
        }
        return cls(own, other, flow_id, envelope, content, we_started=True)

    @classmethod
    def answer(
        cls, own: Own, other: OlmDevice, flow_id: str, envelope: Mapping[str, Any], start: dict[str, Any]
    ) -> SasSession:
        """They started: check we share every method; `accept_content()` is the answer."""
        session = cls(own, other, flow_id, envelope, start, we_started=False)
        macs = _strings(start.get("message_authentication_codes"))
        strings = [s for s in SAS_STRINGS if s in _strings(start.get("short_authentication_string"))]
        if (
            start.get("method") != SAS_METHOD
            or KEY_AGREEMENT not in _strings(start.get("key_agreement_protocols"))
            or HASH not in _strings(start.get("hashes"))
            or not any(m in macs for m in MAC_METHODS)
            or not strings
        ):
            raise SasCancel("m.unknown_method", "no common key agreement, hash, MAC or SAS method")
        session.mac_method = next(m for m in MAC_METHODS if m in macs)
        session.sas_strings = strings
        session.stage = Stage.ACCEPTED
        return session

    def accept_content(self) -> dict[str, Any]:
        if self.we_started:
            raise SasCancel("m.unexpected_message", "we started this verification")
        return {
            "key_agreement_protocol": KEY_AGREEMENT,
            "hash": HASH,
            "message_authentication_code": self.mac_method,
            "short_authentication_string": self.sas_strings,
            "commitment": commitment(self._sas.pubkey, self.start_content),
            **self.envelope,
        }

    def receive_accept(self, content: Mapping[str, Any]) -> None:
        if not self.we_started or self.stage is not Stage.OFFERED:
            raise SasCancel("m.unexpected_message", "unexpected accept")
        strings = [s for s in SAS_STRINGS if s in _strings(content.get("short_authentication_string"))]
        mac = content.get("message_authentication_code")
        if (
            content.get("key_agreement_protocol") != KEY_AGREEMENT
            or content.get("hash") != HASH
            or mac not in MAC_METHODS
            or not strings
        ):
            raise SasCancel("m.unknown_method", "the accept chose a method we did not offer")
        their_commitment = content.get("commitment")
        if not isinstance(their_commitment, str):
            raise SasCancel("m.invalid_message", "accept without a commitment")
        self.mac_method = str(mac)
        self.sas_strings = strings
        self.their_commitment = their_commitment
        self.stage = Stage.ACCEPTED

    # -- key exchange and the short authentication string -----------------------------------

    def key_content(self) -> dict[str, Any]:
        return {"key": self._sas.pubkey, **self.envelope}

    def receive_key(self, content: Mapping[str, Any]) -> None:
        if self.stage is not Stage.ACCEPTED:
            raise SasCancel("m.unexpected_message", "unexpected key")
        key = content.get("key")
        if not isinstance(key, str):
            raise SasCancel("m.invalid_message", "key event without a key")
        # The starter checks that the key is the one the acceptor committed to before seeing ours.
        if self.we_started and not hmac.compare_digest(
            commitment(key, self.start_content), self.their_commitment
        ):
            raise SasCancel("m.mismatched_commitment", "the key does not match the commitment")
        try:
            self._sas.establish_sas(key)
        except ValueError as exc:  # vodozemac: not a Curve25519 key
            raise SasCancel("m.invalid_message", "invalid public key") from exc
        self.stage = Stage.KEYS_EXCHANGED

    def _sas_bytes(self) -> Any:
        established = self._sas.established_sas
        if established is None:
            raise SasCancel("m.unexpected_message", "no shared secret yet")
        # nio builds the spec's info string (who started, user|device|key of each side, flow ID).
        return established.bytes(self._sas._extra_info)

    @property
    def emojis(self) -> list[tuple[str, str]]:
        # vodozemac already gives the seven 6-bit indices; nio's get_emoji() splits them into
        # bits again and so shows other emoji than every other client (decimals are unaffected).
        return [Sas.emoji[index] for index in self._sas_bytes().emoji_indices]

    @property
    def decimals(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self._sas_bytes().decimals)

    def confirm(self) -> None:
        """Our user compared the SAS and it matches."""
        if self.stage is not Stage.KEYS_EXCHANGED:
            raise SasCancel("m.unexpected_message", "no SAS to confirm yet")
        self.stage = Stage.CONFIRMED

    # -- MACs -------------------------------------------------------------------------------

    def _info(self, sender: tuple[str, str], receiver: tuple[str, str]) -> str:
        return f"MATRIX_KEY_VERIFICATION_MAC{sender[0]}{sender[1]}{receiver[0]}{receiver[1]}{self.flow_id}"

    def _mac(self, data: str, info: str) -> str:
        established = self._sas.established_sas
        assert established is not None
        if self.mac_method == MAC_V2:
            return str(established.calculate_mac(data, info))
        return str(established.calculate_mac_invalid_base64(data, info))

    def mac_content(self, keys: Mapping[str, str]) -> dict[str, Any]:
        """MACs of our keys (`ed25519:<id>` → public key) and of their sorted list of IDs."""
        if self.stage is not Stage.CONFIRMED:
            raise SasCancel("m.unexpected_message", "the SAS was not confirmed")
        info = self._info((self.own.user_id, self.own.device_id), (self.other.user_id, self.other.id))
        mac = {key_id: self._mac(public, info + key_id) for key_id, public in keys.items()}
        return {"mac": mac, "keys": self._mac(",".join(sorted(mac)), info + "KEY_IDS"), **self.envelope}

    def verify_mac(self, content: Mapping[str, Any], expected: Mapping[str, str]) -> set[str]:
        """The IDs of `expected` keys (ID → public key as we know it) that the MAC proves.

        Keys we do not know are skipped (as matrix-rust-sdk does); any MAC that does not match,
        or a MAC proving none of the expected keys, cancels."""
        if self.stage is not Stage.CONFIRMED:
            raise SasCancel("m.unexpected_message", "MAC before our SAS confirmation")
        macs, keys_mac = content.get("mac"), content.get("keys")
        if not (isinstance(macs, dict) and isinstance(keys_mac, str)):
            raise SasCancel("m.invalid_message", "malformed MAC event")
        info = self._info((self.other.user_id, self.other.id), (self.own.user_id, self.own.device_id))
        if not self._check(",".join(sorted(macs)), info + "KEY_IDS", keys_mac):
            raise SasCancel("m.key_mismatch", "the MAC of the key list does not match")
        proven = set()
        for key_id, tag in macs.items():
            public = expected.get(key_id)
            if public is None:
                continue
            if not (isinstance(tag, str) and self._check(public, info + key_id, tag)):
                raise SasCancel("m.key_mismatch", f"the MAC of {key_id} does not match")
            proven.add(key_id)
        if not proven:
            raise SasCancel("m.key_mismatch", "the MAC covers none of the keys we know")
        return proven

    def _check(self, data: str, info: str, tag: str) -> bool:
        established = self._sas.established_sas
        assert established is not None
        if self.mac_method != MAC_V2:
            return hmac.compare_digest(self._mac(data, info), tag)
        try:
            established.verify_mac(data, info, tag)  # constant-time, in vodozemac
        except ValueError:
            return False
        return True


__all__ = ["SAS_METHOD", "Own", "SasCancel", "SasSession", "Stage", "commitment"]
