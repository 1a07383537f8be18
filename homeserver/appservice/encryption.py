"""What a bridge that encrypts as its own users needs in its transactions (registration
`org.matrix.msc3202: true`): the to-device messages sent to its users' devices (MSC2409),
who of those it shares rooms with changed their device lists or stopped sharing any, and
the key counts of its devices (MSC3202), under the unstable names bridges (mautrix) read.

Device lists follow /sync's rules (homeserver.handlers.device_lists), with the service's
users (its namespaces' local users and its bot) together as the requester, and "shares a
room" meaning "is joined to a room the service is interested in", as for its events:
`changed` has those whose devices changed and those who came into such a room (or were in
one a service user joined); `left`, those who left one (or were in one that stopped
interesting the service through its users' leaves) and share none any more. The window's
memberships come from its events, which the sender has read already.

To-device messages are read from the device inboxes by stream position, like the events,
and deleted once the service has taken the transaction that carries them. Key counts are
sent for the devices that got to-device messages in the transaction: a peer claims one of
a device's one-time keys, then sends it an Olm message, so that is when the count drops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from typing import Any

from sqlalchemy import select

from homeserver import jsonutil
from homeserver.appservice.registration import AppService
from homeserver.handlers.device_lists import latest_memberships, resolve_changes
from homeserver.server import HomeServer
from homeserver.storage.device_lists import DeviceListStore, MembershipChange
from homeserver.storage.e2e_keys import E2EKeyStore
from homeserver.storage.e2ee_schema import device_inbox
from homeserver.storage.to_device import ToDeviceStore

TO_DEVICE = "de.sorunome.msc2409.to_device"
DEVICE_LISTS = "org.matrix.msc3202.device_lists"
OTK_COUNTS = "org.matrix.msc3202.device_one_time_keys_count"
FALLBACK_KEYS = "org.matrix.msc3202.device_unused_fallback_key_types"

# (user_id, device_id, the stream position of its last message in the transaction)
Delivered = list[tuple[str, str, int]]
RoomWanted = Callable[[str], Awaitable[bool]]
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
        members: Sequence[MembershipChange],
        room_wanted: RoomWanted,
    ) -> tuple[dict[str, Any], Delivered, int]:
        """The transaction fields for (after, end], the inbox rows they deliver, and `end`:
        `upto`, or less when more inbox rows than MAX_INBOX_ROWS are in the window.
        `members`: the member events of (after, upto], in stream order; `room_wanted`: whether
        the service is interested in a room, from its current state."""
        if upto <= after:
            return {}, [], upto
        rows = await self._inbox_between(after, upto, MAX_INBOX_ROWS + 1)
        if len(rows) > MAX_INBOX_ROWS:
            rows = rows[:MAX_INBOX_ROWS]
            upto = rows[-1][0]
        messages: list[dict[str, Any]] = []
        last: dict[tuple[str, str], int] = {}
        for stream_id, user_id, device_id, message in rows:
            if self._owns(service, user_id):
                messages.append({**message, "to_user_id": user_id, "to_device_id": device_id})
                last[(user_id, device_id)] = stream_id
        changed, left = await self._device_lists(
            service, after, upto, [m for m in members if m.stream_id <= upto], room_wanted
        )
        fields: dict[str, Any] = {}
        if messages:
            fields[TO_DEVICE] = messages
        if changed or left:
            fields[DEVICE_LISTS] = {"changed": changed, "left": left}
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

    async def _device_lists(
        self,
        service: AppService,
        after: int,
        upto: int,
        members: Sequence[MembershipChange],
        room_wanted: RoomWanted,
    ) -> tuple[list[str], list[str]]:
        updated = await self.device_lists.changed_between(after, upto)
        latest = latest_memberships(members)
        # The rooms the window's member events are in: a few, and their interest is cached.
        shared = {r for r in sorted({r for r, _ in latest}) if await room_wanted(r)}
        own = {(r, m) for (r, u), m in latest.items() if self._owns(service, u)}
        rooms_joined = {r for r, m in own if m == "join" and r in shared}
        rooms_left = {r for r, m in own if m in ("leave", "ban") and r not in shared}
        scoped = {k: m for k, m in latest.items() if k[0] in shared or k[0] in rooms_left}
        viewer = _ServiceUsers(self.device_lists, partial(self._owns, service), room_wanted)
        return await resolve_changes(
            self.device_lists, viewer, updated, scoped, shared, rooms_joined, rooms_left
        )

    def _owns(self, service: AppService, user_id: str) -> bool:
        """A local user of the service's (user namespaces cover local users only)."""
        return user_id.endswith(self.local) and service.owns_user(user_id)

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


class _ServiceUsers:
    """The service's users as one device list viewer: a user shares a room with them when
    joined to a room the service is interested in."""

    def __init__(self, store: DeviceListStore, owns: Callable[[str], bool], room_wanted: RoomWanted) -> None:
        self.store = store
        self.is_viewer = owns
        self.room_wanted = room_wanted

    async def sharing(self, user_ids: Collection[str]) -> set[str]:
        found = {u for u in user_ids if self.is_viewer(u)}
        others = [u for u in user_ids if u not in found]
        if not others:
            return found
        # One query for everyone's rooms; each room's interest is asked once (and cached).
        interest: dict[str, bool] = {}
        for user_id, rooms in (await self.store.joined_rooms_of(others)).items():
            for room_id in sorted(rooms):
                if room_id not in interest:
                    interest[room_id] = await self.room_wanted(room_id)
                if interest[room_id]:
                    found.add(user_id)
                    break
        return found
