"""Interactive SAS (emoji) verification for the bot, to-device and in rooms.

To-device (device ↔ device): matrix-nio implements the SAS state machine
(`m.key.verification.start/accept/key/mac`); this module drives it from the bot: it answers
`m.key.verification.request` with `ready` (nio does not), accepts incoming starts, shows the emoji
through a `confirm` callback (the CLI asks the operator), sends `done`, and can also start a
verification with a given device.

In rooms (user ↔ user, Element's "Verify user"): `clients.room_verification`, which also proves
the bot's master key to the other side and signs theirs. Both kinds report on `results` and share
one lock, so the operator sees one prompt at a time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from nio import (
    KeyVerificationCancel,
    KeyVerificationEvent,
    KeyVerificationKey,
    KeyVerificationMac,
    KeyVerificationStart,
    MatrixRoom,
    ToDeviceMessage,
    UnknownToDeviceEvent,
)

from clients.room_verification import RoomVerifications
from clients.sas import SAS_METHOD
from clients.trust import matches
from clients.verification_types import Confirm, SasPrompt, VerificationResult

if TYPE_CHECKING:
    from clients.bot import Bot

log = logging.getLogger(__name__)


class Verifier:
    """Answers and starts SAS verifications for one bot; results arrive on `results`."""

    def __init__(self, bot: Bot, confirm: Confirm, allowed_users: tuple[str, ...] = ("*",)) -> None:
        self.bot = bot
        self.confirm = confirm
        self.allowed_users = allowed_users
        self.results: asyncio.Queue[VerificationResult] = asyncio.Queue()
        self._requested: set[str] = set()  # transactions that began with request/ready
        self._prompted: set[str] = set()
        self._lock = asyncio.Lock()
        self.rooms = RoomVerifications(bot, confirm, allowed_users, self.results.put)
        bot.on_to_device(self.handle)
        bot.on_key_verification(self.handle_room_event)

    async def start(self, user_id: str, device_id: str) -> str:
        """Begin a verification with another device (it must have been seen in a key query)."""
        client = self.bot.require_client()
        if client.should_query_keys:
            await client.keys_query()
        device = client.device_store[user_id].get(device_id) if user_id in client.device_store.users else None
        if device is None:
            client.olm.users_for_key_query.add(user_id)
            await client.keys_query()
            device = (
                client.device_store[user_id].get(device_id) if user_id in client.device_store.users else None
            )
        if device is None:
            raise ValueError(f"no known device {device_id} for {user_id}")
        resp = await client.start_key_verification(device)
        if type(resp).__name__ != "ToDeviceResponse":
            raise RuntimeError(f"could not start verification: {getattr(resp, 'status_code', resp)}")
        # nio names the transaction itself; find the SAS it just made for that device.
        for txn, sas in client.key_verifications.items():
            if sas.other_olm_device.id == device_id and sas.other_olm_device.user_id == user_id:
                return str(txn)
        raise RuntimeError("verification did not start")

    async def request_in_room(self, room_id: str, user_id: str) -> str:
        """Ask a user to verify in a room shared with them (a DM); returns the request's event ID.

        They accept on their side; the emoji then go through `confirm` as usual."""
        async with self._lock:
            return await self.rooms.request(room_id, user_id)

    async def handle_room_event(self, room: MatrixRoom, event: Any) -> None:
        async with self._lock:
            try:
                await self.rooms.handle(room, event)
            except Exception:
                log.exception("in-room verification step failed")

    async def handle(self, event: Any) -> None:
        async with self._lock:
            try:
                await self._handle(event)
            except Exception:
                log.exception("verification step failed")

    async def _handle(self, event: Any) -> None:
        client = self.bot.require_client()
        if isinstance(event, UnknownToDeviceEvent) and event.type == "m.key.verification.request":
            await self._on_request(event)
            return
        if not isinstance(event, KeyVerificationEvent):
            return
        txn = event.transaction_id
        if isinstance(event, KeyVerificationStart):
            if not matches(event.sender, self.allowed_users):
                await client.cancel_key_verification(
                    txn, reject=True
                ) if txn in client.key_verifications else None
                return
            if txn not in client.key_verifications:
                # nio drops starts from devices it has not queried yet: query, then replay the event.
                if client.should_query_keys:
                    await client.keys_query()
                client.olm.handle_key_verification(event)
            if txn in client.key_verifications:
                await client.accept_key_verification(txn)
            return
        sas = client.key_verifications.get(txn)
        if isinstance(event, KeyVerificationCancel):
            device = getattr(getattr(sas, "other_olm_device", None), "id", "?")
            await self.results.put(
                VerificationResult(event.sender, device, False, f"canceled: {event.reason}")
            )
            return
        if sas is None:
            return
        if isinstance(event, KeyVerificationKey) and txn not in self._prompted:
            # Our key goes out in this sync's to-device flush; the emoji are ready now.
            await client.send_to_device_messages()
            self._prompted.add(txn)
            device = sas.other_olm_device
            prompt = SasPrompt(device.user_id, device.id, sas.get_emoji(), tuple(sas.get_decimals()))
            if await self.confirm(prompt):
                await client.confirm_short_auth_string(txn)
            else:
                await client.cancel_key_verification(txn, reject=True)
                await self.results.put(VerificationResult(device.user_id, device.id, False, "mismatch"))
            return
        if isinstance(event, KeyVerificationMac) and sas.verified:
            device = sas.other_olm_device
            if txn in self._requested:
                await client.to_device(
                    ToDeviceMessage(
                        "m.key.verification.done", device.user_id, device.id, {"transaction_id": txn}
                    )
                )
            log.info("verified device %s of %s", device.id, device.user_id)
            await self.results.put(VerificationResult(device.user_id, device.id, True))

    async def _on_request(self, event: UnknownToDeviceEvent) -> None:
        content = event.source.get("content", {})
        txn, from_device = content.get("transaction_id"), content.get("from_device")
        if not (isinstance(txn, str) and isinstance(from_device, str)):
            return
        if not matches(event.sender, self.allowed_users) or SAS_METHOD not in content.get("methods", []):
            return
        client = self.bot.require_client()
        self._requested.add(txn)
        await client.to_device(
            ToDeviceMessage(
                "m.key.verification.ready",
                event.sender,
                from_device,
                {"from_device": client.device_id, "methods": [SAS_METHOD], "transaction_id": txn},
            )
        )


__all__ = ["Confirm", "SasPrompt", "VerificationResult", "Verifier"]
