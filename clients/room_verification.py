"""In-room key verification: what Element does when a person clicks "Verify user" in a DM.

The request is an `m.room.message` with `msgtype: m.key.verification.request`; every later step
(`m.key.verification.ready/start/accept/key/mac/done/cancel`) is a room event whose
`m.relates_to` is an `m.reference` to the request, whose event ID is the flow's transaction ID.
The bot hands them here decrypted when they were encrypted, and before its trust policy (the
sender's device may be the very one being verified).

Element (matrix-rust-sdk through matrix-js-sdk) sends every in-room verification event in clear,
even in encrypted rooms, and so does this module, as the spec allows: SAS does not rely on the
channel's secrecy or authenticity (the commitment, the people comparing the SAS and the MACs do
that), and a clear event reaches devices the bot's trust policy keeps room keys from, which may
be exactly the device being verified.

The SAS itself is `clients.sas.SasSession`. After both MACs check out, this module trusts the
other device in nio, and when their MAC proved their master cross-signing key, signs that key
with the bot's user-signing key (the spec's "verifying another user") and pins it. The bot's own
MAC carries its master key too, so the other side can mark the bot's *user* as verified.

Invariants: requests not addressed to the bot (`to`), from users outside `allowed_users`, or
without `m.sas.v1` get no answer at all; events are only taken from the flow's other user; a
flow unused for ten minutes is forgotten (spec timeout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from uuid import uuid4

from nio import MatrixRoom
from nio.crypto import OlmDevice

from clients.bot import Bot, SendError
from clients.crosssigning import CrossSigningError, query_identity
from clients.sas import SAS_METHOD, Own, SasCancel, SasSession, Stage
from clients.trust import matches
from clients.verification_types import (
    PREFIX,
    REQUEST_MSGTYPE,
    Confirm,
    SasPrompt,
    VerificationResult,
)

log = logging.getLogger(__name__)

FLOW_TTL_S = 600.0


@dataclass(slots=True)
class RoomFlow:
    room_id: str
    flow_id: str  # the request's event ID
    other_user: str
    we_requested: bool
    last_seen: float
    other_device: str | None = None
    sas: SasSession | None = None
    pending_mac: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def envelope(self) -> dict[str, Any]:
        return {"m.relates_to": {"rel_type": "m.reference", "event_id": self.flow_id}}


ResultSink = Callable[[VerificationResult], Awaitable[None]]


class RoomVerifications:
    """The in-room flows of one bot. Callers serialise `handle` and `request` (one lock)."""

    def __init__(
        self,
        bot: Bot,
        confirm: Confirm,
        allowed_users: tuple[str, ...],
        report: ResultSink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bot = bot
        self.confirm = confirm
        self.allowed_users = allowed_users
        self.report = report
        self.clock = clock
        self.flows: dict[str, RoomFlow] = {}

    # -- starting ---------------------------------------------------------------------------

    async def request(self, room_id: str, user_id: str) -> str:
        """Ask `user_id` in `room_id` to verify; returns the request's event ID (the flow ID)."""
        client = self.bot.require_client()
        content = {
            "msgtype": REQUEST_MSGTYPE,
            "body": f"{client.user_id} asks to verify your key (your client does not support "
            "in-room verification; use one that does).",
            "from_device": client.device_id,
            "methods": [SAS_METHOD],
            "to": user_id,
        }
        flow_id = await self._send_event(room_id, "m.room.message", content)
        self.flows[flow_id] = RoomFlow(room_id, flow_id, user_id, we_requested=True, last_seen=self.clock())
        log.info("requested verification %s with %s in %s", flow_id, user_id, room_id)
        return flow_id

    # -- receiving --------------------------------------------------------------------------

    async def handle(self, room: MatrixRoom, event: Any) -> None:
        source = getattr(event, "source", {}) or {}
        event_type, content = source.get("type"), source.get("content")
        if not (isinstance(event_type, str) and isinstance(content, dict)):
            return
        self._expire()
        if event_type == "m.room.message":
            if content.get("msgtype") == REQUEST_MSGTYPE:
                await self._on_request(room.room_id, event.sender, event.event_id, content)
            return
        relation = content.get("m.relates_to")
        if not (isinstance(relation, dict) and relation.get("rel_type") == "m.reference"):
            return
        flow = self.flows.get(str(relation.get("event_id")))
        if flow is None or flow.room_id != room.room_id or event.sender != flow.other_user:
            return  # not ours, or a third party in the room
        flow.last_seen = self.clock()
        step = event_type[len(PREFIX) :]
        try:
            await self._step(flow, step, content)
        except SasCancel as cancel:
            await self._cancel(flow, cancel.code, cancel.reason)

    async def _step(self, flow: RoomFlow, step: str, content: dict[str, Any]) -> None:
        if step == "cancel":
            self.flows.pop(flow.flow_id, None)
            code = str(content.get("code", ""))
            log.info("verification %s canceled by %s: %s", flow.flow_id, flow.other_user, code)
            await self._result(flow, False, f"canceled: {code}", code)
        elif step == "ready":
            await self._on_ready(flow, content)
        elif step == "start":
            await self._on_start(flow, content)
        elif step == "accept":
            sas = self._sas(flow, we_started=True)
            sas.receive_accept(content)
            await self._send(flow, "key", sas.key_content())
        elif step == "key":
            await self._on_key(flow, content)
        elif step == "mac":
            sas = self._sas(flow)
            if sas.stage is Stage.CONFIRMED:
                await self._finish(flow, content)
            else:
                flow.pending_mac = content  # checked once our user has compared the SAS
        # `done` needs nothing: the flow ends when both MACs are in.

    async def _on_request(self, room_id: str, sender: str, event_id: str, content: dict[str, Any]) -> None:
        client = self.bot.require_client()
        from_device = content.get("from_device")
        methods = content.get("methods")
        if content.get("to") != client.user_id:
            log.debug("ignoring verification request %s: addressed to %s", event_id, content.get("to"))
            return
        if not matches(sender, self.allowed_users):
            log.info("ignoring verification request %s from %s: not an allowed user", event_id, sender)
            return
        if not (isinstance(from_device, str) and isinstance(methods, list) and SAS_METHOD in methods):
            log.info("ignoring verification request %s from %s: no SAS offered", event_id, sender)
            return
        flow = RoomFlow(room_id, event_id, sender, we_requested=False, last_seen=self.clock())
        flow.other_device = from_device
        self.flows[event_id] = flow
        log.info("answering verification request %s from %s", event_id, sender)
        await self._send(flow, "ready", {"from_device": client.device_id, "methods": [SAS_METHOD]})

    async def _on_ready(self, flow: RoomFlow, content: dict[str, Any]) -> None:
        from_device, methods = content.get("from_device"), content.get("methods")
        if not flow.we_requested or flow.other_device is not None or not isinstance(from_device, str):
            return  # another of their devices answered first, or a stray ready
        flow.other_device = from_device
        if not (isinstance(methods, list) and SAS_METHOD in methods):
            raise SasCancel("m.unknown_method", "no common verification method")
        device = await self._device(flow)
        flow.sas = SasSession.offer(self._own(), device, flow.flow_id, flow.envelope)
        await self._send(flow, "start", flow.sas.start_content)

    async def _on_start(self, flow: RoomFlow, content: dict[str, Any]) -> None:
        from_device = content.get("from_device")
        if not isinstance(from_device, str):
            raise SasCancel("m.invalid_message", "start without from_device")
        if flow.other_device is None and flow.we_requested:
            flow.other_device = from_device  # they skipped ready: the start says which device
        if from_device != flow.other_device:
            return  # another of their devices
        if flow.sas is not None:
            if not (flow.sas.we_started and flow.sas.stage is Stage.OFFERED):
                raise SasCancel("m.unexpected_message", "a second start")
            # Both sides started: the start of the lexicographically smaller user wins (spec).
            client = self.bot.require_client()
            if (str(client.user_id), str(client.device_id)) < (flow.other_user, from_device):
                return
        device = await self._device(flow)
        flow.sas = SasSession.answer(self._own(), device, flow.flow_id, flow.envelope, content)
        await self._send(flow, "accept", flow.sas.accept_content())

    async def _on_key(self, flow: RoomFlow, content: dict[str, Any]) -> None:
        sas = self._sas(flow)
        sas.receive_key(content)
        if not sas.we_started:
            await self._send(flow, "key", sas.key_content())
        prompt = SasPrompt(flow.other_user, sas.other.id, sas.emojis, sas.decimals)
        if not await self.confirm(prompt):
            self.flows.pop(flow.flow_id, None)
            mismatch = {"code": "m.mismatched_sas", "reason": "the short authentication strings differ"}
            await self._send(flow, "cancel", mismatch)
            await self._result(flow, False, "mismatch", "m.mismatched_sas")
            return
        sas.confirm()
        await self._send(flow, "mac", sas.mac_content(self._own_keys()))
        if flow.pending_mac is not None:
            await self._finish(flow, flow.pending_mac)

    async def _finish(self, flow: RoomFlow, content: dict[str, Any]) -> None:
        """Their MAC: check it, then trust their device and vouch for their identity."""
        client = self.bot.require_client()
        sas = self._sas(flow)
        device = sas.other
        device_key_id = f"ed25519:{device.id}"
        expected = {device_key_id: device.ed25519}
        identity = await query_identity(client, flow.other_user)
        master = identity.master_public
        if master is not None:
            expected[f"ed25519:{master}"] = master
        proven = sas.verify_mac(content, expected)
        self.flows.pop(flow.flow_id, None)
        if device_key_id in proven:
            if device.blacklisted:
                client.unblacklist_device(device)
            client.verify_device(device)
        signed = False
        if master is not None and f"ed25519:{master}" in proven and identity.master_key is not None:
            signed = await self._vouch(flow.other_user, master, identity.master_key)
        await self._send(flow, "done", {})
        log.info(
            "verified %s (device %s%s) in %s",
            flow.other_user,
            device.id,
            ", master key signed" if signed else "",
            flow.room_id,
        )
        await self._result(flow, True, "", "", master_key=master if signed else None)

    async def _vouch(self, user_id: str, master: str, master_key: dict[str, Any]) -> bool:
        """Sign their master key with our user-signing key and pin it as their identity."""
        cross_signing = self.bot.cross_signing
        if cross_signing is None or cross_signing.keys is None:
            log.warning("verified %s but cannot sign their identity: no cross-signing keys", user_id)
            return False
        try:
            await cross_signing.sign_user(user_id, master_key)
        except CrossSigningError as exc:
            log.warning("could not sign the identity of %s: %s", user_id, exc)
            return False
        if self.bot.trust is not None:
            self.bot.trust.accept_identity(user_id, master)
        return True

    # -- helpers ----------------------------------------------------------------------------

    def _sas(self, flow: RoomFlow, we_started: bool | None = None) -> SasSession:
        if flow.sas is None or (we_started is not None and flow.sas.we_started != we_started):
            raise SasCancel("m.unexpected_message", "no matching SAS in progress")
        return flow.sas

    def _own(self) -> Own:
        client = self.bot.require_client()
        return Own(str(client.user_id), str(client.device_id), client.olm.account.identity_keys["ed25519"])

    def _own_keys(self) -> dict[str, str]:
        """Our device key, and our master key when we have an identity: users verify users."""
        own = self._own()
        keys = {f"ed25519:{own.device_id}": own.ed25519}
        cross_signing = self.bot.cross_signing
        if cross_signing is not None and cross_signing.keys is not None:
            master = cross_signing.keys.master_public
            keys[f"ed25519:{master}"] = master
        return keys

    async def _device(self, flow: RoomFlow) -> OlmDevice:
        """Their device's keys, from nio's store or a fresh /keys/query."""
        client = self.bot.require_client()
        assert flow.other_device is not None
        for attempt in range(2):
            if flow.other_user in client.device_store.users:
                device = client.device_store[flow.other_user].get(flow.other_device)
                if device is not None and not device.deleted:
                    return device
            if attempt == 0:
                client.olm.users_for_key_query.add(flow.other_user)
                await client.keys_query()
        raise SasCancel("m.invalid_message", f"unknown device {flow.other_device}")

    async def _send(self, flow: RoomFlow, step: str, content: dict[str, Any]) -> None:
        await self._send_event(flow.room_id, PREFIX + step, {**content, **flow.envelope})

    async def _send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send in clear (see the module docstring); returns the event ID."""
        client = self.bot.require_client()
        path = f"/v3/rooms/{quote(room_id, safe='')}/send/{quote(event_type, safe='')}/{uuid4().hex}"
        resp = await client.request_json("PUT", path, content)
        event_id = resp.body.get("event_id")
        if resp.status != 200 or not isinstance(event_id, str):
            raise SendError(f"{event_type} not sent to {room_id}: HTTP {resp.status}")
        return event_id

    async def _cancel(self, flow: RoomFlow, code: str, reason: str) -> None:
        self.flows.pop(flow.flow_id, None)
        log.info("canceling verification %s with %s: %s", flow.flow_id, flow.other_user, code)
        await self._send(flow, "cancel", {"code": code, "reason": reason})
        await self._result(flow, False, f"canceled by us: {code}", code)

    async def _result(
        self, flow: RoomFlow, verified: bool, reason: str, code: str, master_key: str | None = None
    ) -> None:
        device = flow.sas.other.id if flow.sas is not None else flow.other_device or "?"
        await self.report(
            VerificationResult(flow.other_user, device, verified, reason, code=code, master_key=master_key)
        )

    def _expire(self) -> None:
        now = self.clock()
        for flow_id in [f for f, flow in self.flows.items() if now - flow.last_seen > FLOW_TTL_S]:
            del self.flows[flow_id]
