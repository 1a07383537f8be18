"""Creating and changing accounts as a server admin (Synapse's PUT /_synapse/admin/v2/users/
{userId}): one request sets any of the password, display name, avatar, admin flag, lock and
deactivation; an unknown user is created.

Profile changes go through the profile handler, so they reach the user's rooms as other
profile changes do. `threepids` and `external_ids` replace the user's email addresses
(validated now) and single sign-on links; an address or link of another user is a 409.
Without email configured, asking to set addresses is refused rather than dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.errors import Codes, MatrixError, bad_json, missing_param
from homeserver.handlers.admin import AdminHandler
from homeserver.handlers.auth import Requester
from homeserver.handlers.profile import AVATAR_URL, DISPLAYNAME, ProfileHandler
from homeserver.handlers.registration import validate_password
from homeserver.handlers.threepids import canonical_email
from homeserver.handlers.users import create_account

USER_TYPES = (None, "bot", "support")
FLAGS = ("admin", "deactivated", "locked", "logout_devices")
# user_threepids.address is a String(255).
MAX_ADDRESS_LENGTH = 255


def check_body(body: Mapping[str, Any], threepids_allowed: bool = False) -> None:
    """The field types (the values themselves are checked where they are used)."""
    for key in FLAGS:
        if key in body and not isinstance(body[key], bool):
            raise bad_json(f"{key} must be a boolean")
    for key in ("password", DISPLAYNAME, AVATAR_URL):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise bad_json(f"{key} must be a string")
    if body.get("user_type") not in USER_TYPES:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user type")
    for key in ("threepids", "external_ids"):
        value = body.get(key)
        if value is not None and not isinstance(value, list):
            raise bad_json(f"{key} must be a list")
    if body.get("threepids") and not threepids_allowed:
        raise MatrixError(400, Codes.INVALID_PARAM, "threepids are not supported on this server")
    for threepid in body.get("threepids") or []:
        if not isinstance(threepid, dict) or not all(
            isinstance(threepid.get(k), str) and threepid[k] for k in ("medium", "address")
        ):
            raise bad_json("each of threepids needs a medium and an address")
        if threepid["medium"] not in ("email", "msisdn"):
            raise MatrixError(400, Codes.INVALID_PARAM, "medium must be email or msisdn")
        if len(threepid["address"]) > MAX_ADDRESS_LENGTH:  # the column's size
            raise MatrixError(400, Codes.INVALID_PARAM, "address is too long")
    for link in body.get("external_ids") or []:
        if not isinstance(link, dict) or not all(
            isinstance(link.get(k), str) and link[k] for k in ("auth_provider", "external_id")
        ):
            raise bad_json("each of external_ids needs an auth_provider and an external_id")


def external_links(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(link["auth_provider"], link["external_id"]) for link in body["external_ids"]]


def threepid_list(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (t["medium"], canonical_email(t["address"]) if t["medium"] == "email" else t["address"])
        for t in body["threepids"] or []
    ]


class AdminUsers:
    def __init__(self, admin: AdminHandler, profiles: ProfileHandler, *, email_enabled: bool = False) -> None:
        self.admin = admin
        self.profiles = profiles
        self.accounts = admin.accounts
        # Email is configured: accounts may have addresses (see homeserver/handlers/threepids.py).
        self.email_enabled = email_enabled

    async def put(
        self, requester: Requester, user_id: str, body: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """(201, the user) when created, else (200, the user)."""
        if user_id.partition(":")[2] != self.admin.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "Can only manage local users")
        localpart = user_id[1:].partition(":")[0]
        if not user_id.startswith("@") or localpart != localpart.lower():
            raise MatrixError(400, Codes.INVALID_USERNAME, "User IDs here are lower case")
        check_body(body, self.email_enabled)
        password = body.get("password")
        if password is not None:
            validate_password(password)
        existing = await self.admin.store.get_user(user_id)
        if "external_ids" in body:
            # Checked first, so that a conflict changes nothing (not even a creation).
            for provider, external_id in external_links(body):
                owner = await self.admin.external_ids.user_for(provider, external_id)
                if owner not in (None, user_id):
                    raise MatrixError(409, Codes.UNKNOWN, "External ID is already in use")
        if "threepids" in body:
            for medium, address in threepid_list(body):
                if await self.admin.threepids.user_for(medium, address) not in (None, user_id):
                    raise MatrixError(409, Codes.THREEPID_IN_USE, "Threepid is already in use")
        if existing is None:
            await self._create(requester, user_id, body)
            await self._links(user_id, body)
            return 201, await self.admin.query_user(user_id)
        if body.get("deactivated") is True and not existing.deactivated:
            await self.admin.deactivate(user_id)
            return 200, await self.admin.query_user(user_id)
        if body.get("deactivated") is False and existing.deactivated:
            if password is None:
                raise missing_param("password (needed to reactivate an account)")
            await self.accounts.reactivate(user_id, await self.admin.passwords.hash(password))
        elif existing.deactivated:
            raise MatrixError(400, Codes.USER_DEACTIVATED, "The account is deactivated")
        elif password is not None:
            await self.admin.reset_password(
                user_id, password, logout_devices=body.get("logout_devices", True) is not False
            )
        if "admin" in body:
            await self.set_admin(requester, user_id, body["admin"])
        await self._profile_and_lock(requester, user_id, body)
        await self._links(user_id, body)
        self.admin.auth.invalidate_user(user_id)
        return 200, await self.admin.query_user(user_id)

    async def _links(self, user_id: str, body: Mapping[str, Any]) -> None:
        """`external_ids`: the user's single sign-on links, replacing any before."""
        if "external_ids" in body and not await self.admin.external_ids.replace_for_user(
            user_id, external_links(body)
        ):
            raise MatrixError(409, Codes.UNKNOWN, "External ID is already in use")
        if "threepids" in body and not await self.admin.threepids.replace_for_user(
            user_id, threepid_list(body), self.admin.clock.time_ms()
        ):
            raise MatrixError(409, Codes.THREEPID_IN_USE, "Threepid is already in use")

    async def set_admin(self, requester: Requester, user_id: str, flag: bool) -> None:
        await self.admin.query_user(user_id)  # 404 for an unknown user, 400 for a remote one
        if user_id == requester.user_id and not flag:
            raise MatrixError(400, Codes.INVALID_PARAM, "You may not demote yourself")
        await self.accounts.set_admin(user_id, flag)
        self.admin.auth.invalidate_user(user_id)

    async def _create(self, requester: Requester, user_id: str, body: Mapping[str, Any]) -> None:
        if body.get("deactivated"):
            raise MatrixError(400, Codes.INVALID_PARAM, "A new account cannot be deactivated")
        localpart = user_id[1:].partition(":")[0]
        await create_account(
            self.accounts,
            self.admin.passwords,
            self.admin.server_name,
            localpart,
            body.get("password"),
            self.admin.clock.time_ms(),
            admin=body.get("admin", False) is True,
            displayname=body.get(DISPLAYNAME),
        )
        await self._profile_and_lock(requester, user_id, {k: v for k, v in body.items() if k != DISPLAYNAME})

    async def _profile_and_lock(self, requester: Requester, user_id: str, body: Mapping[str, Any]) -> None:
        for key in (DISPLAYNAME, AVATAR_URL):
            if key in body:
                await self.profiles.set_field(requester, user_id, key, {key: body[key]})
        if "locked" in body:
            await self.accounts.set_moderation(user_id, "locked", body["locked"])
