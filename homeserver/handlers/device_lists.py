"""Device list tracking for /sync `device_lists` and /keys/changes.

A user appears in `changed` for a window (since, upto] when they share a room with
the requester and changed their devices or cross-signing keys in the window, or when
they started sharing a room with the requester in it (a join by either side). A user
appears in `left` when the requester no longer shares any room with them and a leave
(by either side) happened in the window. The requester's own changes are reported to
them too, so their other devices notice new siblings.

The same rules give an encrypting application service its `device_lists`, with the
service's users together as the requester (`resolve_changes` with another `Viewer`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Container, Iterable, Mapping
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
        updated = await self.store.changed_between(since, upto)
        own = await self.store.own_membership_changes(user_id, since, upto)
        rooms_joined_now = {r for r, m in own if m == "join" and r in joined}
        rooms_left_now = {r for r, m in own if m != "join" and r not in joined}
        latest = latest_memberships(await self.store.membership_changes(joined | rooms_left_now, since, upto))
        viewer = _OneUser(self.store, user_id, joined)
        return await resolve_changes(
            self.store, viewer, updated, latest, joined, rooms_joined_now, rooms_left_now
        )


class Viewer(Protocol):
    """Whose device lists `resolve_changes` computes: one user (/sync, /keys/changes), or an
    application service's users taken together (homeserver.appservice.encryption)."""

    def is_viewer(self, user_id: str) -> bool: ...

    async def sharing(self, user_ids: Collection[str]) -> set[str]:
        """Those of `user_ids` who share a room with the viewer now (the viewer's own users too)."""
        ...


class _OneUser:
    def __init__(self, store: DeviceListSource, user_id: str, joined: Collection[str]) -> None:
        self.store = store
        self.user_id = user_id
        self.joined = joined

    def is_viewer(self, user_id: str) -> bool:
        return user_id == self.user_id

    async def sharing(self, user_ids: Collection[str]) -> set[str]:
        found = await self.store.users_sharing(self.joined, [u for u in user_ids if u != self.user_id])
        if self.user_id in user_ids:
            found.add(self.user_id)
        return found


def latest_memberships(changes: Iterable[MembershipChange]) -> dict[tuple[str, str], str]:
    """(room_id, user_id) -> the last membership the changes (in stream order) give."""
    return {(c.room_id, c.user_id): c.membership for c in changes}


async def resolve_changes(
    store: DeviceListSource,
    viewer: Viewer,
    updated: set[str],
    latest: Mapping[tuple[str, str], str],
    shared: Container[str],
    rooms_joined: Collection[str],
    rooms_left: Collection[str],
) -> tuple[list[str], list[str]]:
    """`changed` and `left` (sorted) for a window, from what happened in it: `updated`, the
    users whose device lists changed; `latest`, the last membership of each (room, user) in
    the rooms `shared` with the viewer now or `rooms_left` by it; `rooms_joined`, the rooms
    the viewer joined (their members are new to it)."""
    changed = await viewer.sharing(updated) if updated else set()
    left_candidates: set[str] = set()
    for (room_id, other), membership in latest.items():
        if viewer.is_viewer(other):
            continue
        if membership == "join" and room_id in shared:
            changed.add(other)
        elif membership in ("leave", "ban"):
            left_candidates.add(other)
    if rooms_joined:
        changed |= await store.joined_members(rooms_joined)
    if rooms_left:
        left_candidates |= await store.joined_members(rooms_left)
    left_candidates = {u for u in left_candidates if not viewer.is_viewer(u)}
    left = left_candidates - await viewer.sharing(left_candidates) if left_candidates else set()
    # The viewer's own users are there for their own device changes only.
    changed = {u for u in changed if u in updated or not viewer.is_viewer(u)}
    changed -= left
    return sorted(changed), sorted(left)
