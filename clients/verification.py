"""Interactive SAS (emoji) verification for the bot, to-device and in rooms.

To-device (device ↔ device, `clients.device_verification`): answers requests with `ready` and
bare starts with `accept`, and `start(user, device)` asks one device to verify.
In rooms (user ↔ user, Element's "Verify user", `clients.room_verification`): answers requests
in a DM, and `request_in_room(room, user)` asks.

Both run the same SAS flow (`clients.sas_flows` on `clients.sas.SasSession`): the emoji go
through a `confirm` callback (the CLI asks the operator), the bot's MAC proves its master key
too, and a verified peer's master key (another user) or device (the bot's own) gets signed.
Both kinds report on `results` and share one lock, so the operator sees one prompt at a time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from nio import MatrixRoom

from clients.device_verification import DeviceVerifications
from clients.room_verification import RoomVerifications
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
        self._lock = asyncio.Lock()
        self.rooms = RoomVerifications(bot, confirm, allowed_users, self.results.put)
        self.devices = DeviceVerifications(bot, confirm, allowed_users, self.results.put)
        bot.on_to_device(self.handle)
        bot.on_key_verification(self.handle_room_event)

    async def start(self, user_id: str, device_id: str) -> str:
        """Ask a device to verify (to-device); returns the transaction ID.

        Raises ValueError when no key query knows the device."""
        async with self._lock:
            return await self.devices.request(user_id, device_id)

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
                await self.devices.handle(event)
            except Exception:
                log.exception("to-device verification step failed")


__all__ = ["Confirm", "SasPrompt", "VerificationResult", "Verifier"]
