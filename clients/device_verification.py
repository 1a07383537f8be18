"""To-device key verification: one device verifies another directly (Element's "Verify session",
or `sotto-bot verify --user U --device D`).

Every event is a to-device message whose content carries the flow's `transaction_id`: the
request (`m.key.verification.request`, with `from_device`, `methods`, `timestamp`), then
`ready/start/accept/key/mac/done/cancel`. From `ready` on, the flow is `clients.sas_flows`,
exactly as in a room. A bare `start` without a request (older clients) is answered too.

matrix-nio would run its own SAS state machine on these events (hex commitment, mislabelled
MACs: it only interoperates with itself); `SottoAsyncClient` keeps them from it, so nio merely
parses and delivers them here, and this module sends with `client.to_device`.

Verification events arrive unencrypted (matrix-rust-sdk sends them so): SAS does not rely on the
channel. Olm-encrypted ones are not handled (nio drops the decrypted payload).

Invariants: requests from users outside `allowed_users`, without `m.sas.v1`, reusing a live
transaction ID or outside the spec's time window get no answer; a flow's events are only taken
from its other user, and what we send goes to its one other device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

from nio import ToDeviceMessage, ToDeviceResponse

from clients.bot import Bot, SendError
from clients.sas import SAS_METHOD, SasCancel
from clients.sas_flows import Flow, ResultSink, SasFlows
from clients.trust import matches
from clients.verification_types import PREFIX, Confirm

log = logging.getLogger(__name__)

REQUEST = PREFIX + "request"
# A request older than ten minutes, or five minutes in the future, is ignored (spec).
REQUEST_MAX_AGE_MS = 10 * 60 * 1000
REQUEST_MAX_SKEW_MS = 5 * 60 * 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


class DeviceVerifications(SasFlows):
    """The to-device flows of one bot, keyed by transaction ID."""

    def __init__(
        self,
        bot: Bot,
        confirm: Confirm,
        allowed_users: tuple[str, ...],
        report: ResultSink,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        super().__init__(bot, confirm, allowed_users, report, clock)
        self.wall_clock_ms = wall_clock_ms  # request timestamps are wall-clock milliseconds

    async def request(self, user_id: str, device_id: str) -> str:
        """Ask one device of `user_id` to verify; returns the transaction ID."""
        client = self.bot.require_client()
        txn = uuid4().hex
        flow = Flow(txn, user_id, we_requested=True, last_seen=self.clock(), envelope={"transaction_id": txn})
        flow.other_device = device_id
        try:
            await self._device(flow)  # fail early on a device nobody knows
        except SasCancel:
            raise ValueError(f"no known device {device_id} for {user_id}") from None
        self.flows[txn] = flow
        content = {
            "from_device": client.device_id,
            "methods": [SAS_METHOD],
            "timestamp": self.wall_clock_ms(),
        }
        await self._send(flow, "request", content)
        log.info("requested verification %s with %s / %s", txn, user_id, device_id)
        return txn

    async def handle(self, event: Any) -> None:
        source = getattr(event, "source", {}) or {}
        event_type, content, sender = source.get("type"), source.get("content"), source.get("sender")
        if not (
            isinstance(event_type, str)
            and event_type.startswith(PREFIX)
            and isinstance(content, dict)
            and isinstance(sender, str)
        ):
            return
        txn = content.get("transaction_id")
        if not isinstance(txn, str):
            return
        self.expire()
        flow = self.flows.get(txn)
        if flow is None and event_type == REQUEST:
            await self._new_flow(sender, txn, event_type, content)
            return
        if flow is None and event_type == PREFIX + "start":
            flow = await self._new_flow(sender, txn, event_type, content)
        if flow is None or sender != flow.other_user:
            return  # a transaction ID of someone else's flow
        await self.step(flow, event_type[len(PREFIX) :], content)

    async def _new_flow(self, sender: str, txn: str, event_type: str, content: dict[str, Any]) -> Flow | None:
        """A flow they begin: with a request (answered with ready), or a bare start."""
        from_device, methods = content.get("from_device"), content.get("methods")
        if not matches(sender, self.allowed_users):
            log.info("ignoring verification %s from %s: not an allowed user", txn, sender)
            return None
        if not isinstance(from_device, str):
            return None
        if event_type == REQUEST:
            if not (isinstance(methods, list) and SAS_METHOD in methods):
                log.info("ignoring verification request %s from %s: no SAS offered", txn, sender)
                return None
            timestamp, now = content.get("timestamp"), self.wall_clock_ms()
            if not (
                isinstance(timestamp, int)
                and now - REQUEST_MAX_AGE_MS <= timestamp <= now + REQUEST_MAX_SKEW_MS
            ):
                log.info("ignoring verification request %s from %s: stale or future timestamp", txn, sender)
                return None
        flow = Flow(
            txn,
            sender,
            we_requested=False,
            last_seen=self.clock(),
            envelope={"transaction_id": txn},
            other_device=from_device,
            ready=True,
        )
        self.flows[txn] = flow
        if event_type == REQUEST:
            client = self.bot.require_client()
            log.info("answering verification request %s from %s / %s", txn, sender, from_device)
            await self._send(flow, "ready", {"from_device": client.device_id, "methods": [SAS_METHOD]})
        return flow

    async def _send(self, flow: Flow, step: str, content: dict[str, Any]) -> None:
        assert flow.other_device is not None  # to-device flows always name the device
        client = self.bot.require_client()
        message = ToDeviceMessage(
            PREFIX + step, flow.other_user, flow.other_device, {**content, **flow.envelope}
        )
        resp = await client.to_device(message)
        if not isinstance(resp, ToDeviceResponse):
            raise SendError(
                f"{PREFIX + step} not sent to {flow.other_user}: {getattr(resp, 'status_code', '')}"
            )
