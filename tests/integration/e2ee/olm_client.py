"""A minimal Matrix E2EE client built directly on python-olm (libolm).

It is an independent implementation for interop tests: it publishes device, one-time
and fallback keys, claims keys, establishes Olm sessions, shares and receives Megolm
sessions over to-device messages, and encrypts/decrypts room messages. Crypto is all
libolm; this module only assembles the Matrix JSON around it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from canonicaljson import encode_canonical_json
from olm.account import Account
from olm.group_session import InboundGroupSession, OutboundGroupSession
from olm.session import (
    InboundSession,
    OlmMessage,
    OlmPreKeyMessage,
    OlmSessionError,
    OutboundSession,
    Session,
)
from olm.utility import ed25519_verify

from tests.support.http import RawClient

OLM_ALGORITHM = "m.olm.v1.curve25519-aes-sha2"
MEGOLM_ALGORITHM = "m.megolm.v1.aes-sha2"


def canonical(obj: dict[str, Any]) -> str:
    signable = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return encode_canonical_json(signable).decode()


@dataclass
class OlmClient:
    http: aiohttp.ClientSession
    base_url: str
    user_id: str
    device_id: str
    token: str
    account: Account = field(default_factory=Account)
    next_batch: str | None = None
    sessions: dict[str, list[Session]] = field(default_factory=dict)
    inbound_group: dict[str, InboundGroupSession] = field(default_factory=dict)
    to_device_log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_login(cls, http: aiohttp.ClientSession, base_url: str, login: dict[str, Any]) -> OlmClient:
        return cls(http, base_url, login["user_id"], login["device_id"], login["access_token"])

    @property
    def raw(self) -> RawClient:
        return RawClient(self.http, self.base_url, self.token, self.user_id)

    @property
    def curve25519(self) -> str:
        return str(self.account.identity_keys["curve25519"])

    @property
    def ed25519(self) -> str:
        return str(self.account.identity_keys["ed25519"])

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        signed = dict(obj)
        sigs = dict(signed.get("signatures") or {})
        sigs.setdefault(self.user_id, {})
        sigs[self.user_id] = {
            **sigs[self.user_id],
            f"ed25519:{self.device_id}": self.account.sign(canonical(obj)),
        }
        signed["signatures"] = sigs
        return signed

    def device_keys(self) -> dict[str, Any]:
        return self.sign(
            {
                "user_id": self.user_id,
                "device_id": self.device_id,
                "algorithms": [OLM_ALGORITHM, MEGOLM_ALGORITHM],
                "keys": {
                    f"curve25519:{self.device_id}": self.curve25519,
                    f"ed25519:{self.device_id}": self.ed25519,
                },
            }
        )

    def new_one_time_keys(self, count: int) -> dict[str, Any]:
        self.account.generate_one_time_keys(count)
        keys = {
            f"signed_curve25519:{key_id}": self.sign({"key": key})
            for key_id, key in self.account.one_time_keys["curve25519"].items()
        }
        return keys

    def new_fallback_key(self) -> dict[str, Any]:
        self.account.generate_fallback_key()
        ((key_id, key),) = self.account.fallback_key["curve25519"].items()
        return {f"signed_curve25519:{key_id}": self.sign({"key": key, "fallback": True})}

    async def upload_keys(self, one_time: int = 10, fallback: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "device_keys": self.device_keys(),
            "one_time_keys": self.new_one_time_keys(one_time),
        }
        if fallback:
            body["fallback_keys"] = self.new_fallback_key()
        result: dict[str, Any] = await self.raw.ok("POST", "/keys/upload", json=body)
        self.account.mark_keys_as_published()
        return result

    async def sync(self, timeout: int = 0) -> dict[str, Any]:
        params = {"timeout": str(timeout)}
        if self.next_batch:
            params["since"] = self.next_batch
        resp: dict[str, Any] = await self.raw.ok("GET", "/sync", params=params)
        self.next_batch = resp["next_batch"]
        for event in resp.get("to_device", {}).get("events", []):
            self.to_device_log.append(event)
            if event["type"] == "m.room.encrypted":
                self._receive_olm(event)
        return resp

    # Olm ---------------------------------------------------------------------------------

    async def claim_and_start_session(self, user_id: str, device_id: str) -> tuple[OutboundSession, str, str]:
        """Query the device's keys, claim a one-time key and start an Olm session."""
        query = await self.raw.ok("POST", "/keys/query", json={"device_keys": {user_id: [device_id]}})
        dk = query["device_keys"][user_id][device_id]
        their_curve = dk["keys"][f"curve25519:{device_id}"]
        their_ed = dk["keys"][f"ed25519:{device_id}"]
        ed25519_verify(their_ed, canonical(dk), dk["signatures"][user_id][f"ed25519:{device_id}"])
        claim = await self.raw.ok(
            "POST", "/keys/claim", json={"one_time_keys": {user_id: {device_id: "signed_curve25519"}}}
        )
        ((_, otk),) = claim["one_time_keys"][user_id][device_id].items()
        ed25519_verify(their_ed, canonical(otk), otk["signatures"][user_id][f"ed25519:{device_id}"])
        session = OutboundSession(self.account, their_curve, otk["key"])
        self.sessions.setdefault(their_curve, []).append(session)
        return session, their_curve, their_ed

    def olm_encrypt(
        self,
        session: Session,
        their_user: str,
        their_device: str,
        their_curve: str,
        their_ed: str,
        event_type: str,
        content: dict[str, Any],
    ) -> dict[str, Any]:
        payload = {
            "type": event_type,
            "content": content,
            "sender": self.user_id,
            "sender_device": self.device_id,
            "recipient": their_user,
            "recipient_keys": {"ed25519": their_ed},
            "keys": {"ed25519": self.ed25519},
        }
        message = session.encrypt(json.dumps(payload))
        msg_type = 0 if isinstance(message, OlmPreKeyMessage) else 1
        return {
            "algorithm": OLM_ALGORITHM,
            "sender_key": self.curve25519,
            "ciphertext": {their_curve: {"type": msg_type, "body": message.ciphertext}},
        }

    def _receive_olm(self, event: dict[str, Any]) -> None:
        content = event["content"]
        if content.get("algorithm") != OLM_ALGORITHM or self.curve25519 not in content.get("ciphertext", {}):
            return
        sender_key = content["sender_key"]
        ct = content["ciphertext"][self.curve25519]
        message: OlmMessage | OlmPreKeyMessage
        plaintext = None
        if ct["type"] == 0:
            message = OlmPreKeyMessage(ct["body"])
            for session in self.sessions.get(sender_key, []):
                if session.matches(message, sender_key):
                    plaintext = session.decrypt(message)
                    break
            if plaintext is None:
                session = InboundSession(self.account, message, sender_key)
                self.account.remove_one_time_keys(session)
                self.sessions.setdefault(sender_key, []).append(session)
                plaintext = session.decrypt(message)
        else:
            message = OlmMessage(ct["body"])
            for session in self.sessions.get(sender_key, []):
                try:
                    plaintext = session.decrypt(message)
                    break
                except OlmSessionError:
                    continue
        if plaintext is None:
            raise AssertionError("could not decrypt an Olm message")
        payload = json.loads(plaintext)
        assert payload["recipient"] == self.user_id
        assert payload["recipient_keys"]["ed25519"] == self.ed25519
        event["decrypted"] = payload
        if payload["type"] == "m.room_key" and payload["content"].get("algorithm") == MEGOLM_ALGORITHM:
            room_key = payload["content"]
            self.inbound_group[room_key["session_id"]] = InboundGroupSession(room_key["session_key"])

    # Megolm ------------------------------------------------------------------------------

    def megolm_decrypt(self, event: dict[str, Any]) -> dict[str, Any]:
        content = event["content"]
        session = self.inbound_group[content["session_id"]]
        plaintext, _index = session.decrypt(content["ciphertext"])
        decrypted: dict[str, Any] = json.loads(plaintext)
        assert decrypted["room_id"] == event.get("room_id", decrypted["room_id"])
        return decrypted

    @staticmethod
    def megolm_encrypt(
        group: OutboundGroupSession,
        room_id: str,
        sender_key: str,
        device_id: str,
        event_type: str,
        content: dict[str, Any],
    ) -> dict[str, Any]:
        ciphertext = group.encrypt(json.dumps({"type": event_type, "content": content, "room_id": room_id}))
        return {
            "algorithm": MEGOLM_ALGORITHM,
            "sender_key": sender_key,
            "ciphertext": ciphertext,
            "session_id": group.id,
            "device_id": device_id,
        }

    async def send_to_device(self, event_type: str, messages: dict[str, dict[str, Any]], txn: str) -> None:
        await self.raw.ok(
            "PUT", f"/sendToDevice/{quote(event_type)}/{quote(txn)}", json={"messages": messages}
        )
