"""Devices: listing, renaming and deleting a user's devices.

Deleting a device always removes its access tokens (and drops them from the
token cache) before anything else, then runs the `on_device_deleted` hooks:
other areas register there to clean up per-device data (E2EE device keys,
to-device inboxes, pushers) and to announce device-list changes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.errors import not_found
from homeserver.handlers.auth import AuthHandler
from homeserver.storage.accounts import AccountStore, DeviceRow

log = logging.getLogger(__name__)

# (user_id, deleted device IDs) -> None. Called after the devices and their tokens are gone.
DeviceDeletedHook = Callable[[str, list[str]], Awaitable[None]]

MAX_DISPLAY_NAME_LEN = 256


def device_json(row: DeviceRow) -> dict[str, Any]:
    # Every key is present (null when unknown): matrix-nio indexes them unconditionally.
    return {
        "device_id": row.device_id,
        "display_name": row.display_name,
        "last_seen_ip": row.last_seen_ip,
        "last_seen_ts": row.last_seen_ts,
    }


class DeviceHandler:
    def __init__(self, accounts: AccountStore, auth: AuthHandler) -> None:
        self.accounts = accounts
        self.auth = auth
        self.on_device_deleted: list[DeviceDeletedHook] = []

    async def list_devices(self, user_id: str) -> list[dict[str, Any]]:
        return [device_json(row) for row in await self.accounts.list_devices(user_id)]

    async def get_device(self, user_id: str, device_id: str) -> dict[str, Any]:
        row = await self.accounts.get_device(user_id, device_id)
        if row is None:
            raise not_found("Unknown device")
        return device_json(row)

    async def rename_device(self, user_id: str, device_id: str, display_name: str) -> None:
        if not await self.accounts.update_device(user_id, device_id, display_name[:MAX_DISPLAY_NAME_LEN]):
            raise not_found("Unknown device")

    async def delete_devices(self, user_id: str, device_ids: list[str] | None) -> list[str]:
        """Delete some (or, with None, all) of a user's devices and log them out.

        Returns the IDs of the devices that existed and were deleted.
        """
        existing = [row.device_id for row in await self.accounts.list_devices(user_id)]
        deleted = existing if device_ids is None else [d for d in existing if d in set(device_ids)]
        token_hashes = await self.accounts.tokens_for_devices(user_id, device_ids)
        await self.accounts.delete_devices(user_id, device_ids)
        self.auth.invalidate(token_hashes)
        if deleted:
            await self._run_hooks(user_id, deleted)
        return deleted

    async def delete_other_devices(self, user_id: str, keep_device_id: str | None) -> list[str]:
        """Log out every device but `keep_device_id` (all of them when it is None)."""
        if keep_device_id is None:
            return await self.delete_devices(user_id, None)
        others = [
            row.device_id
            for row in await self.accounts.list_devices(user_id)
            if row.device_id != keep_device_id
        ]
        return await self.delete_devices(user_id, others) if others else []

    async def _run_hooks(self, user_id: str, device_ids: list[str]) -> None:
        for hook in self.on_device_deleted:
            try:
                await hook(user_id, device_ids)
            except Exception:
                # One area's cleanup failing must not undo the logout or skip the others.
                log.exception("device-deleted hook %r failed for %s", hook, user_id)
