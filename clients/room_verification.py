"""In-room key verification: what Element does when a person clicks "Verify user" in a DM.

The request is an `m.room.message` with `msgtype: m.key.verification.request`; every later step
(`m.key.verification.ready/start/accept/key/mac/done/cancel`) is a room event whose
`m.relates_to` is an `m.reference` to the request, whose event ID is the flow's ID. The bot hands
them here decrypted when they were encrypted, and before its trust policy (the sender's device
may be the very one being verified). From `ready` on, the flow is `clients.sas_flows`.

Element (matrix-rust-sdk through matrix-js-sdk) sends every in-room verification event in clear,
even in encrypted rooms, and so does this module, as the spec allows: SAS does not rely on the
channel's secrecy or authenticity (the commitment, the people comparing the SAS and the MACs do
that), and a clear event reaches devices the bot's trust policy keeps room keys from, which may
be exactly the device being verified.

Invariants: requests not addressed to the bot (`to`), from users outside `allowed_users`, or
without `m.sas.v1` get no answer at all; events are only taken from the flow's room and other user.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote
from uuid import uuid4

from nio import MatrixRoom

from clients.bot import SendError
from clients.sas import SAS_METHOD
from clients.sas_flows import Flow, SasFlows
from clients.trust import matches
from clients.verification_types import PREFIX, REQUEST_MSGTYPE

log = logging.getLogger(__name__)


def _envelope(flow_id: str) -> dict[str, Any]:
    return {"m.relates_to": {"rel_type": "m.reference", "event_id": flow_id}}


class RoomVerifications(SasFlows):
    """The in-room flows of one bot, keyed by the request's event ID."""

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
        self.flows[flow_id] = Flow(
            flow_id,
            user_id,
            we_requested=True,
            last_seen=self.clock(),
            envelope=_envelope(flow_id),
            room_id=room_id,
        )
        log.info("requested verification %s with %s in %s", flow_id, user_id, room_id)
        return flow_id

    async def handle(self, room: MatrixRoom, event: Any) -> None:
        source = getattr(event, "source", {}) or {}
        event_type, content = source.get("type"), source.get("content")
        if not (isinstance(event_type, str) and isinstance(content, dict)):
            return
        self.expire()
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
        await self.step(flow, event_type[len(PREFIX) :], content)

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
        flow = Flow(
            event_id,
            sender,
            we_requested=False,
            last_seen=self.clock(),
            envelope=_envelope(event_id),
            room_id=room_id,
            other_device=from_device,
            ready=True,
        )
        self.flows[event_id] = flow
        log.info("answering verification request %s from %s", event_id, sender)
        await self._send(flow, "ready", {"from_device": client.device_id, "methods": [SAS_METHOD]})

    async def _send(self, flow: Flow, step: str, content: dict[str, Any]) -> None:
        assert flow.room_id is not None
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
