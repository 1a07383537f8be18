"""Device list tracking for /sync `device_lists` and /keys/changes.

A user appears in `changed` for a window (since, upto] when they share a room with
the requester and changed their devices or cross-signing keys in the window, or when
they started sharing a room with the requester in it (a join by either side). A user
appears in `left` when the requester no longer shares any room with them and a leave
(by either side) happened in the window. The requester's own changes are reported to
them too, so their other devices notice new siblings.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Protocol

from homeserver.storage.device_lists import MembershipChange
from homeserver.sync.notifier import Notifier

log = logging.getLogger(__name__)

# Called with a local user ID after their device list changed (federation sends m.device_list_update).
LocalChangeHook = Callable[[str], Awaitable[None]]


class DeviceListSource(Protocol):
    """What the handler reads (homeserver.storage.device_lists.DeviceListStore; fakes in unit tests)."""

    async def mark_changed(self, user_ids: Iterable[str]) -> int: ...
    async def changed_between(self, since: int, upto: int) -> set[str]: ...
    async def membership_changes(
        self, room_ids: Collection[str], since: int, upto: int
    ) -> list[MembershipChange]: ...
    async def joined_members(self, room_ids: Collection[str]) -> set[str]: ...
    async def users_sharing(self, room_ids: Collection[str], candidates: Collection[str]) -> set[str]: ...
    async def own_membership_changes(self, user_id: str, since: int, upto: int) -> list[tuple[str, str]]: ...
    async def joined_rooms(self, user_id: str) -> list[str]: ...


class DeviceListHandler:
    def __init__(self, store: DeviceListSource, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier
        # bridge/ appends a hook here to send m.device_list_update EDUs to servers sharing rooms.
        self.on_local_change: list[LocalChangeHook] = []

    async def changed(self, user_id: str) -> None:
        """Wake everyone who shares a room with `user_id` (and the user) after a committed change."""
        rooms = await self.store.joined_rooms(user_id)
        self.notifier.notify(rooms=rooms, users=[user_id])
        for hook in self.on_local_change:
            try:
                await hook(user_id)
            except Exception:
                log.exception("device list change hook failed")

    def signed_for(self, signer: str) -> None:
        """`signer` signed someone else's master key (already marked changed by the store):
        the signature is theirs alone to see, so only their streams wake, and no other
        server is told."""
        self.notifier.notify(users=[signer])

    async def mark_and_notify(self, user_ids: Collection[str]) -> None:
        """Record a change for users whose keys changed outside this module (e.g. remote updates)."""
        await self.store.mark_changed(user_ids)
        for user_id in user_ids:
            await self.changed(user_id)

    async def get_changes(
        self,
        user_id: str,
        since: int,
        upto: int,
        joined_room_ids: Collection[str],
    ) -> tuple[list[str], list[str]]:
        if since >= upto:
            return [], []
        joined = set(joined_room_ids)
        changed: set[str] = set()
        left_candidates: set[str] = set()

        updated = await self.store.changed_between(since, upto)
        if updated:
            if user_id in updated:
                changed.add(user_id)
            changed |= await self.store.users_sharing(joined, updated - {user_id})

        own = await self.store.own_membership_changes(user_id, since, upto)
        rooms_joined_now = {r for r, m in own if m == "join" and r in joined}
        rooms_left_now = {r for r, m in own if m != "join" and r not in joined}

        latest: dict[tuple[str, str], str] = {}
        for change in await self.store.membership_changes(joined | rooms_left_now, since, upto):
            latest[(change.room_id, change.user_id)] = change.membership
        for (room_id, other), membership in latest.items():
            if other == user_id:
                continue
            if membership == "join" and room_id in joined:
                changed.add(other)
            elif membership in ("leave", "ban"):
                left_candidates.add(other)

        if rooms_joined_now:
            changed |= await self.store.joined_members(rooms_joined_now)
        if rooms_left_now:
            left_candidates |= await self.store.joined_members(rooms_left_now)
        left_candidates.discard(user_id)
        left = left_candidates - await self.store.users_sharing(joined, left_candidates)
        if user_id not in updated:
            changed.discard(user_id)
        changed -= left
        return sorted(changed), sorted(left)
