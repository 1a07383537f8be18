"""The /sync sections for end-to-end encryption.

Fills `to_device`, `device_lists` (incremental syncs only), `device_one_time_keys_count`
and `device_unused_fallback_key_types` for the syncing device.

To-device messages are delivered as the device's inbox rows in (since, upto], at most
`limit` per sync. Syncing with `since` confirms (and deletes) everything up to `since`.
When more than `limit` are pending, the response carries `_to_device_limited: True` and
`_to_device_upto` (the position of the last message delivered): the sync handler must
then answer with a token no later than that position, or call `cap_upto` beforehand.

Within a core SyncHandler pass (SYNC_CONTEXT), the per-user probe it loaded supplies the
key counts and tells whether the inbox holds anything at all, and the device-list query
runs only when something that could change the lists happened in the window.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.auth import Requester
from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.handlers.e2e_keys import E2EKeysHandler
from homeserver.handlers.to_device import ToDeviceHandler
from homeserver.sync.shared import SYNC_CONTEXT, SyncContext, device_lists_may_have_changed

TO_DEVICE_LIMIT = 100


class E2EESyncExtension:
    def __init__(
        self,
        keys: E2EKeysHandler,
        to_device: ToDeviceHandler,
        device_lists: DeviceListHandler,
        limit: int = TO_DEVICE_LIMIT,
    ) -> None:
        self.keys = keys
        self.to_device = to_device
        self.device_lists = device_lists
        self.limit = limit

    async def cap_upto(self, requester: Requester, since: int | None, upto: int) -> int:
        """The highest position a sync may answer with so that no to-device message is skipped."""
        batch = await self.to_device.store.fetch(
            requester.user_id, requester.device_id, since, upto, self.limit
        )
        return batch.last_stream_id if batch.limited else upto

    async def sync_fields(
        self,
        requester: Requester,
        since: int | None,
        upto: int,
        joined_room_ids: list[str],
        response: dict[str, Any],
    ) -> None:
        user_id, device_id = requester.user_id, requester.device_id
        ctx = SYNC_CONTEXT.get()
        probe = ctx.probe if ctx is not None and ctx.upto == upto and ctx.since == since else None
        if probe is not None and (probe.inbox_min is None or probe.inbox_min > upto):
            # The device's inbox holds nothing at or below upto: nothing to deliver or confirm.
            response["to_device"] = {"events": []}
        else:
            batch = await self.to_device.sync_batch(user_id, device_id, since, upto, self.limit)
            response["to_device"] = {"events": batch.messages}
            if batch.limited:
                response["_to_device_limited"] = True
                response["_to_device_upto"] = batch.last_stream_id
        if since is not None:
            changed: list[str] = []
            left: list[str] = []
            if (
                ctx is None
                or probe is None
                or await self._lists_may_have_changed(ctx, since, upto, joined_room_ids)
            ):
                changed, left = await self.device_lists.get_changes(user_id, since, upto, joined_room_ids)
            response["device_lists"] = {"changed": changed, "left": left}
        if probe is not None:
            counts = dict(probe.one_time_keys)
            counts.setdefault("signed_curve25519", 0)
            fallback = list(probe.fallback_keys)
        else:
            counts, fallback = await self.keys.key_counts(user_id, device_id)
        response["device_one_time_keys_count"] = counts
        response["device_unused_fallback_key_types"] = fallback

    async def _lists_may_have_changed(
        self, ctx: SyncContext, since: int, upto: int, joined_room_ids: list[str]
    ) -> bool:
        """False when DeviceListHandler.get_changes would find nothing: no device list changed
        in (since, upto], the user's own memberships did not change, and no member event landed
        in the user's rooms. The first and last are the same for every sync in the window."""
        known = device_lists_may_have_changed(ctx.memberships, ctx.window, since, upto, joined_room_ids)
        if known is not None:
            return known
        store = self.device_lists.store
        if await ctx.memo.get(upto, ("device_lists", since), lambda: store.changed_between(since, upto)):
            return True
        rooms = tuple(joined_room_ids)
        return await ctx.memo.get(
            upto,
            ("member_events", rooms, since),
            lambda: ctx.reads.member_events_between(rooms, since, upto),
        )
