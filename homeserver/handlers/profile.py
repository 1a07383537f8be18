"""Profiles: display names and avatars, and their propagation into rooms.

A change to a local user's display name or avatar is stored first, then a new
`m.room.member` event (the current one with the field replaced) is sent into
every room the user has joined, as the spec's "Events on Change of Profile
Information" asks.

`displayname` and `avatar_url` are kept with the account; any other field (`m.tz`,
namespaced custom keys: spec v1.16) holds any JSON value, in `profile_fields`, as long as
the whole profile stays under 64 KiB (M_PROFILE_TOO_LARGE). Only the display name and avatar
go into member events.
Remote users' profiles are looked up through `remote_lookup`, which federation
sets; without it they are reported as not found. `on_profile_changed` hooks let
other areas (user directory, presence) follow local changes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from homeserver.errors import Codes, MatrixError, bad_json, forbidden, missing_param, not_found
from homeserver.events.canonical import canonical_json
from homeserver.handlers.auth import Requester
from homeserver.handlers.event_creation import EventCreator
from homeserver.storage.accounts import AccountStore
from homeserver.storage.events import EventStore
from homeserver.storage.profile_fields import ProfileFieldStore

log = logging.getLogger(__name__)

DISPLAYNAME = "displayname"
AVATAR_URL = "avatar_url"
STORED_FIELDS = (DISPLAYNAME, AVATAR_URL)
MAX_DISPLAYNAME_LEN = 256
MAX_AVATAR_URL_LEN = 1000
MAX_KEY_BYTES = 255
MAX_PROFILE_BYTES = 64 * 1024
# The spec's keyName grammar: the two historical fields, m.tz, or a namespaced identifier.
_KEY_RE = re.compile(r"^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$")

# (user_id, field or None for the whole profile) -> profile JSON. Raises MatrixError (404/403).
RemoteProfileLookup = Callable[[str, str | None], Awaitable[dict[str, Any]]]
# (user_id, new profile {displayname?, avatar_url?}) after a local user's profile changed.
ProfileChangedHook = Callable[[str, dict[str, Any]], Awaitable[None]]


def validate_key(key: str) -> None:
    if len(key.encode()) > MAX_KEY_BYTES:
        raise MatrixError(400, "M_KEY_TOO_LARGE", "Profile key is longer than 255 bytes")
    if not _KEY_RE.match(key):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid profile key name")


def _validate_value(key: str, value: Any) -> str | None:
    """The value to store for a stored field; an empty string or null clears it.

    (Clients such as mautrix clear an avatar with null; the users table cannot
    keep a null apart from "unset", so both mean "no value".)
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_json(f"{key} must be a string")
    if key == DISPLAYNAME:
        if len(value) > MAX_DISPLAYNAME_LEN:
            raise MatrixError(400, Codes.INVALID_PARAM, "Display name is too long")
    elif value:
        if len(value) > MAX_AVATAR_URL_LEN:
            raise MatrixError(400, Codes.INVALID_PARAM, "Avatar URL is too long")
        if not value.startswith("mxc://"):
            raise MatrixError(400, Codes.INVALID_PARAM, "avatar_url must be an mxc:// URI")
    return value or None


class ProfileHandler:
    def __init__(
        self,
        accounts: AccountStore,
        events: EventStore,
        creator: EventCreator,
        server_name: str,
        fields: ProfileFieldStore,
    ) -> None:
        self.accounts = accounts
        self.fields = fields
        self.events = events
        self.creator = creator
        self.server_name = server_name
        self.remote_lookup: RemoteProfileLookup | None = None
        # Asked about an unknown local user first (application services register bridged
        # users on demand); True: look again.
        self.user_query: Callable[[str], Awaitable[bool]] | None = None
        # Other areas (user directory, presence) register here to follow profile changes.
        self.on_profile_changed: list[ProfileChangedHook] = []

    def is_local(self, user_id: str) -> bool:
        return user_id.partition(":")[2] == self.server_name

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        if not user_id.startswith("@") or ":" not in user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user ID")
        if not self.is_local(user_id):
            if self.remote_lookup is None:
                raise not_found("Profile not found")
            return await self.remote_lookup(user_id, None)
        row = await self.accounts.get_profile(user_id)
        if row is None and self.user_query is not None and await self.user_query(user_id):
            row = await self.accounts.get_profile(user_id)
        if row is None or row[2]:
            raise not_found("Profile not found")
        displayname, avatar_url, _ = row
        profile: dict[str, Any] = await self.fields.all_of(user_id)
        if displayname is not None:
            profile[DISPLAYNAME] = displayname
        if avatar_url is not None:
            profile[AVATAR_URL] = avatar_url
        return profile

    async def get_field(self, user_id: str, key: str) -> dict[str, Any]:
        validate_key(key)
        if not self.is_local(user_id) and self.remote_lookup is not None:
            profile = await self.remote_lookup(user_id, key)
        else:
            profile = await self.get_profile(user_id)
        if key not in profile:
            raise not_found(f"No {key} set for this user")
        return {key: profile[key]}

    async def set_field(self, requester: Requester, user_id: str, key: str, body: Mapping[str, Any]) -> None:
        validate_key(key)
        self._check_may_edit(requester, user_id)
        if key not in body:
            raise missing_param(key)
        if key not in STORED_FIELDS:
            await self._set_custom(user_id, key, body[key])
            return
        await self._update(user_id, key, _validate_value(key, body[key]))

    async def delete_field(self, requester: Requester, user_id: str, key: str) -> None:
        validate_key(key)
        self._check_may_edit(requester, user_id)
        if key in STORED_FIELDS:
            await self._update(user_id, key, None)
        else:
            await self.fields.delete(user_id, key)

    async def _set_custom(self, user_id: str, key: str, value: Any) -> None:
        row = await self.accounts.get_profile(user_id)
        if row is None or row[2]:
            raise not_found("Unknown user")
        profile = await self.get_profile(user_id)
        profile[key] = value
        if len(canonical_json(profile)) > MAX_PROFILE_BYTES:
            raise MatrixError(400, "M_PROFILE_TOO_LARGE", "The profile would be larger than 64 KiB")
        await self.fields.set(user_id, key, value)

    def _check_may_edit(self, requester: Requester, user_id: str) -> None:
        if user_id != requester.user_id and not (requester.is_admin and self.is_local(user_id)):
            raise forbidden("You cannot change another user's profile")

    async def _update(self, user_id: str, key: str, value: str | None) -> None:
        row = await self.accounts.get_profile(user_id)
        if row is None or row[2]:
            raise not_found("Unknown user")
        current = row[0] if key == DISPLAYNAME else row[1]
        if current == value:
            return
        await self.accounts.set_profile(user_id, **{key: value})
        await self._propagate(user_id, key, value)
        profile = {DISPLAYNAME: row[0], AVATAR_URL: row[1], key: value}
        for hook in self.on_profile_changed:
            try:
                await hook(user_id, {k: v for k, v in profile.items() if v is not None})
            except Exception:
                log.exception("profile-changed hook %r failed for %s", hook, user_id)

    async def _propagate(self, user_id: str, key: str, value: str | None) -> None:
        """Send an updated join event into every room the user is joined to."""
        joined = [
            room_id
            for room_id, membership, _, _ in await self.events.get_memberships_for_user(user_id)
            if membership == "join"
        ]
        for room_id in joined:
            try:
                state = await self.events.get_current_state(room_id, [("m.room.member", user_id)])
                member = state.get(("m.room.member", user_id))
                if member is None:
                    continue
                content = dict(member.event.content)
                if content.get("membership") != "join" or content.get(key) == value:
                    continue
                if value is None:
                    content.pop(key, None)
                else:
                    content[key] = value
                await self.creator.create_and_send(
                    room_id=room_id, type="m.room.member", sender=user_id, content=content, state_key=user_id
                )
            except MatrixError as e:
                # Refused (the auth rules, unaccepted terms): the profile is saved; the others go on.
                log.info("%s's member event in %s not updated: %s", user_id, room_id, e.errcode)
            except Exception:
                # The profile is saved; one room failing the update must not block the others.
                log.exception("could not update %s's member event in %s", user_id, room_id)
