"""What a bridge that encrypts as its own users needs in its transactions (registration
`org.matrix.msc3202: true`): the to-device messages sent to its users' devices (MSC2409),
the users whose device lists changed among those it shares rooms with, and the key counts
of its devices (MSC3202), under the unstable names bridges (mautrix) read.

To-device messages are read from the device inboxes by stream position, like the events,
and deleted once the service has taken the transaction that carries them. Key counts are
sent for the devices that got to-device messages in the transaction: a peer claims one of
a device's one-time keys, then sends it an Olm message, so that is when the count drops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from homeserver import jsonutil
from homeserver.appservice.registration import AppService
from homeserver.server import HomeServer
from homeserver.storage.device_lists import DeviceListStore
from homeserver.storage.e2e_keys import E2EKeyStore
from homeserver.storage.e2ee_schema import device_inbox
from homeserver.storage.to_device import ToDeviceStore

TO_DEVICE = "de.sorunome.msc2409.to_device"
DEVICE_LISTS = "org.matrix.msc3202.device_lists"
OTK_COUNTS = "org.matrix.msc3202.device_one_time_keys_count"
FALLBACK_KEYS = "org.matrix.msc3202.device_unused_fallback_key_types"

# (user_id, device_id, the stream position of its last message in the transaction)
Delivered = list[tuple[str, str, int]]
# Inbox rows read per transaction (all users' messages are read, the service's kept): a
# service back after a long absence catches up in steps, not in one read.
MAX_INBOX_ROWS = 1000


class EncryptionFields:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.local = ":" + hs.server_name
        self.keys = E2EKeyStore(hs.db)
        self.device_lists = DeviceListStore(hs.db)
        self.inbox = ToDeviceStore(hs.db)

    async def between(
        self,
        service: AppService,
        after: int,
        upto: int,
        user_wanted: Callable[[str], Awaitable[bool]],
    ) -> tuple[dict[str, Any], Delivered, int]:
        """The transaction fields for (after, end], the inbox rows they deliver, and `end`:
        `upto`, or less when more inbox rows than MAX_INBOX_ROWS are in the window."""
        if upto <= after:
            return {}, [], upto
        rows = await self._inbox_between(after, upto, MAX_INBOX_ROWS + 1)
        if len(rows) > MAX_INBOX_ROWS:
            rows = rows[:MAX_INBOX_ROWS]
            upto = rows[-1][0]
        messages: list[dict[str, Any]] = []
        last: dict[tuple[str, str], int] = {}
        for stream_id, user_id, device_id, message in rows:
            if user_id.endswith(self.local) and service.owns_user(user_id):
                messages.append({**message, "to_user_id": user_id, "to_device_id": device_id})
                last[(user_id, device_id)] = stream_id
        changed = [
            u for u in sorted(await self.device_lists.changed_between(after, upto)) if await user_wanted(u)
        ]
        fields: dict[str, Any] = {}
        if messages:
            fields[TO_DEVICE] = messages
        if changed:
            fields[DEVICE_LISTS] = {"changed": changed, "left": []}
        counts: dict[str, dict[str, dict[str, int]]] = {}
        fallback: dict[str, dict[str, list[str]]] = {}
        for user_id, device_id in last:
            otks, fallbacks = await self.keys.key_counts(user_id, device_id)
            counts.setdefault(user_id, {})[device_id] = {"signed_curve25519": 0, **otks}
            fallback.setdefault(user_id, {})[device_id] = fallbacks
        if counts:
            fields[OTK_COUNTS] = counts
            fields[FALLBACK_KEYS] = fallback
        return fields, [(u, d, s) for (u, d), s in last.items()], upto

    async def delivered(self, rows: Delivered) -> None:
        """The service took the transaction: its to-device messages leave the inboxes."""
        for user_id, device_id, stream_id in rows:
            await self.inbox.delete_confirmed(user_id, device_id, stream_id)

    async def _inbox_between(
        self, after: int, upto: int, limit: int
    ) -> list[tuple[int, str, str, dict[str, Any]]]:
        c = device_inbox.c
        q = (
            select(c.stream_id, c.user_id, c.device_id, c.message_json)
            .where(c.stream_id > after, c.stream_id <= upto)
            .order_by(c.stream_id)
            .limit(limit)
        )
        async with self.hs.db.read() as conn:
            rows = (await conn.execute(q)).all()
        return [(int(r[0]), r[1], r[2], jsonutil.loads(r[3])) for r in rows]
