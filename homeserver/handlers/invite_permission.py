"""Invite permission (spec v1.18): a user who sets `m.invite_permission_config` account data
with `default_action: block` gets no invites. Invites to them are refused with 403
M_INVITE_BLOCKED (from local users, in createRoom's `invite` list without failing the
room's creation, and over federation), and invites they already have are not shown in
/sync or sliding sync until they lift the block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.storage.account_data import AccountDataStore

CONFIG_TYPE = "m.invite_permission_config"


def blocks_invites(config: Mapping[str, Any] | None) -> bool:
    """Whether an `m.invite_permission_config` content blocks invites (other values, or
    none, mean "as normal")."""
    return isinstance(config, Mapping) and config.get("default_action") == "block"


class InvitePermission:
    def __init__(self, account_data: AccountDataStore) -> None:
        self.account_data = account_data

    async def blocks_invites(self, user_id: str) -> bool:
        return blocks_invites(await self.account_data.get(user_id, None, CONFIG_TYPE))

    async def check(self, target: str) -> None:
        """Raise 403 M_INVITE_BLOCKED if the (local) user blocks invites."""
        if await self.blocks_invites(target):
            raise MatrixError(403, Codes.INVITE_BLOCKED, "This user does not accept invites")
