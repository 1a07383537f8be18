"""The SAS verification flow after the request, shared by both transports.

`clients.room_verification` (in a room, `m.relates_to` to the request event) and
`clients.device_verification` (to-device, `transaction_id`) differ only in how a flow begins and
how its events are addressed; from `ready` on they run this: start/accept, key exchange, the
operator comparing the SAS (`confirm`), MACs, `done`. The SAS itself is `clients.sas.SasSession`,
and the flow's `envelope` is merged into every content it sends.

After both MACs check out, the other device is trusted in nio. Then, depending on whose it is:
- another user's: when their MAC proved their master cross-signing key, the bot signs that key
  with its user-signing key and pins it (the spec's "verifying another user");
- the bot's own other device: the bot signs it with its self-signing key, so everyone who trusts
  the bot's identity trusts that device (what Element does after verifying a new session).
The bot's own MAC carries its master key too, so the other side can trust the bot's identity.

Invariants: events are only taken from the flow's other user (and device, once known); nothing
is trusted or signed unless both SAS confirmations and the MAC check succeeded; a flow unused
for ten minutes is forgotten (spec timeout).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nio.crypto import OlmDevice

from clients.crosssigning import CrossSigningError, query_identity
from clients.sas import SAS_METHOD, Own, SasCancel, SasSession, Stage
from clients.verification_types import Confirm, SasPrompt, VerificationResult

if TYPE_CHECKING:
    from clients.bot import Bot

log = logging.getLogger(__name__)

FLOW_TTL_S = 600.0

ResultSink = Callable[[VerificationResult], Awaitable[None]]


@dataclass(slots=True)
class Flow:
    flow_id: str  # the request's event ID in a room, the transaction ID over to-device
    other_user: str
    we_requested: bool
    last_seen: float
    envelope: dict[str, Any]
    room_id: str | None = None  # in-room flows only
    other_device: str | None = None
    ready: bool = False
    sas: SasSession | None = None
    pending_mac: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"in {self.room_id}" if self.room_id else "to-device"


class SasFlows(ABC):
    """The flows of one transport. Callers serialise every call (one lock for both transports)."""

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
        self.flows: dict[str, Flow] = {}

    @abstractmethod
    async def _send(self, flow: Flow, step: str, content: dict[str, Any]) -> None:
        """Send `m.key.verification.<step>` with `content` (the envelope merged in) to the other side."""

    # -- one step of a flow ------------------------------------------------------------------

    async def step(self, flow: Flow, step: str, content: dict[str, Any]) -> None:
        """An event of the flow from its other user; cancels the flow on any protocol error."""
        flow.last_seen = self.clock()
        try:
            await self._step(flow, step, content)
        except SasCancel as cancel:
            await self.cancel(flow, cancel.code, cancel.reason)

    async def _step(self, flow: Flow, step: str, content: dict[str, Any]) -> None:
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

    async def _on_ready(self, flow: Flow, content: dict[str, Any]) -> None:
        from_device, methods = content.get("from_device"), content.get("methods")
        if not flow.we_requested or flow.ready or not isinstance(from_device, str):
            return  # a stray ready, or another of their devices answered first
        if flow.other_device is not None and from_device != flow.other_device:
            return  # we asked one device (to-device): another one's ready is not for us
        flow.other_device = from_device
        flow.ready = True
        if not (isinstance(methods, list) and SAS_METHOD in methods):
            raise SasCancel("m.unknown_method", "no common verification method")
        device = await self._device(flow)
        flow.sas = SasSession.offer(self._own(), device, flow.flow_id, flow.envelope)
        await self._send(flow, "start", flow.sas.start_content)

    async def _on_start(self, flow: Flow, content: dict[str, Any]) -> None:
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

    async def _on_key(self, flow: Flow, content: dict[str, Any]) -> None:
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

    async def _finish(self, flow: Flow, content: dict[str, Any]) -> None:
        """Their MAC: check it, then trust their device and vouch for what it proved."""
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
        signed_master = signed_device = False
        if flow.other_user == client.user_id:
            signed_device = device_key_id in proven and await self._sign_own_device(device, master)
        elif master is not None and f"ed25519:{master}" in proven and identity.master_key is not None:
            signed_master = await self._vouch(flow.other_user, master, identity.master_key)
        await self._send(flow, "done", {})
        log.info(
            "verified %s (device %s%s) %s",
            flow.other_user,
            device.id,
            ", master key signed" if signed_master else ", device cross-signed" if signed_device else "",
            flow.where,
        )
        await self._result(
            flow, True, "", "", master_key=master if signed_master else None, signed_device=signed_device
        )

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

    async def _sign_own_device(self, device: OlmDevice, server_master: str | None) -> bool:
        """Our other device, verified: sign it with our self-signing key (if still our identity)."""
        cross_signing = self.bot.cross_signing
        if cross_signing is None or cross_signing.keys is None:
            return False
        if server_master != cross_signing.keys.master_public:
            log.warning("not signing device %s: the account's identity is not the bot's", device.id)
            return False
        try:
            await cross_signing.sign_device(device.id, ed25519=device.ed25519)  # False: signed before
        except CrossSigningError as exc:
            log.warning("could not sign device %s: %s", device.id, exc)
            return False
        return True

    # -- helpers ----------------------------------------------------------------------------

    def _sas(self, flow: Flow, we_started: bool | None = None) -> SasSession:
        if flow.sas is None or (we_started is not None and flow.sas.we_started != we_started):
            raise SasCancel("m.unexpected_message", "no matching SAS in progress")
        return flow.sas

    def _own(self) -> Own:
        client = self.bot.require_client()
        return Own(str(client.user_id), str(client.device_id), client.olm.account.identity_keys["ed25519"])

    def _own_keys(self) -> dict[str, str]:
        """Our device key, and our master key when we have an identity: users verify users,
        and our own other devices learn to trust the identity that signs us."""
        own = self._own()
        keys = {f"ed25519:{own.device_id}": own.ed25519}
        cross_signing = self.bot.cross_signing
        if cross_signing is not None and cross_signing.keys is not None:
            master = cross_signing.keys.master_public
            keys[f"ed25519:{master}"] = master
        return keys

    async def _device(self, flow: Flow) -> OlmDevice:
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

    async def cancel(self, flow: Flow, code: str, reason: str) -> None:
        self.flows.pop(flow.flow_id, None)
        log.info("canceling verification %s with %s: %s", flow.flow_id, flow.other_user, code)
        await self._send(flow, "cancel", {"code": code, "reason": reason})
        await self._result(flow, False, f"canceled by us: {code}", code)

    async def _result(
        self,
        flow: Flow,
        verified: bool,
        reason: str,
        code: str,
        master_key: str | None = None,
        signed_device: bool = False,
    ) -> None:
        device = flow.sas.other.id if flow.sas is not None else flow.other_device or "?"
        await self.report(
            VerificationResult(
                flow.other_user,
                device,
                verified,
                reason,
                code=code,
                master_key=master_key,
                signed_device=signed_device,
            )
        )

    def expire(self) -> None:
        now = self.clock()
        for flow_id in [f for f, flow in self.flows.items() if now - flow.last_seen > FLOW_TTL_S]:
            del self.flows[flow_id]
