"""Room lifecycle: createRoom and membership changes (join, invite, leave, kick, ban, unban).

Each step is an ordinary local event through EventCreator, so the auth rules
decide what is allowed; this module only assembles the right events.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.errors import Codes, MatrixError, bad_json, forbidden
from homeserver.events import KNOWN_ROOM_VERSIONS, Event
from homeserver.handlers.event_creation import EventCreator
from homeserver.handlers.invite_permission import InvitePermission
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.accounts import AccountStore
from homeserver.storage.aliases import AliasStore
from homeserver.storage.events import EventStore

log = logging.getLogger(__name__)

# Room versions new rooms may be created in (older ones are known for federation only).
SUPPORTED_ROOM_VERSIONS = ("10", "11", "12")

PRESETS = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {
        "join_rule": "invite",
        "history_visibility": "shared",
        "guest_access": "can_join",
    },
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}

# Joining a room this server does not know: the federation layer (bridge/) installs this.
RemoteJoin = Callable[[str, str, list[str], dict[str, Any]], Awaitable[str]]
RemoteInvite = Callable[[str, str, str, dict[str, Any]], Awaitable[None]]
# (user_id, room_id, candidate servers, knock content) -> room_id; set by federation.
RemoteKnock = Callable[[str, str, list[str], dict[str, Any]], Awaitable[str]]
# (room_id, candidate servers, suggested_only) -> a server's federation /hierarchy answer for
# a room this server does not know, or None; set by federation.
RemoteHierarchy = Callable[[str, list[str], bool], Awaitable[dict[str, Any] | None]]
# (user_id, field or None) -> a remote user's profile, from their server; set by federation.
RemoteProfile = Callable[[str, str | None], Awaitable[dict[str, Any]]]
PROFILE_KEYS = ("displayname", "avatar_url")


def default_power_levels(creator: str, privileged_creators: bool) -> dict[str, Any]:
    return {
        # v12 creators have infinite power and must not be listed in `users`.
        "users": {} if privileged_creators else {creator: 100},
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "historical": 100,
        "notifications": {"room": 50},
    }


class RoomHandler:
    def __init__(
        self,
        events: EventStore,
        creator: EventCreator,
        aliases: AliasStore,
        accounts: AccountStore,
        server_name: str,
        default_room_version: str,
        account_data: AccountDataStore,
        *,
        profile_on_invite: bool = True,
    ) -> None:
        self.events = events
        self.creator = creator
        self.aliases = aliases
        self.accounts = accounts
        self.server_name = server_name
        self.default_room_version = default_room_version
        self.invite_permission = InvitePermission(account_data)
        self.remote_join: RemoteJoin | None = None
        self.remote_invite: RemoteInvite | None = None
        # Whether a local user exists; with application services, they are asked about an
        # unknown one first (they register bridged users on demand).
        self.user_exists: Callable[[str], Awaitable[bool]] = accounts.user_exists
        self.remote_knock: RemoteKnock | None = None
        # Invites carry the invitee's display name and avatar, as Synapse's do
        # (profiles.include_profile_data_on_invite); a remote invitee's come from their server.
        self.profile_on_invite = profile_on_invite
        self.remote_profile: RemoteProfile | None = None
        self.remote_hierarchy: RemoteHierarchy | None = None
        # Asked before a user leaves a room (or rejects an invite) themself: raises to refuse.
        self.leave_guards: list[Callable[[str, str], Awaitable[None]]] = []

    def is_local_user(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.server_name)

    async def _send(
        self, room_id: str, sender: str, type: str, content: dict[str, Any], state_key: str | None = None
    ) -> Event:
        event, _ = await self.creator.create_and_send(
            room_id=room_id, type=type, sender=sender, content=content, state_key=state_key
        )
        return event

    async def _member_content(
        self,
        user_id: str,
        membership: str,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": membership}
        if membership == "join" and self.is_local_user(user_id):
            user = await self.accounts.get_user(user_id)
            if user:
                if user.get("displayname"):
                    content["displayname"] = user["displayname"]
                if user.get("avatar_url"):
                    content["avatar_url"] = user["avatar_url"]
        if extra:
            content.update(extra)
        return content

    async def create_room(self, user_id: str, body: dict[str, Any]) -> tuple[str, str | None]:
        """POST /createRoom. Returns (room_id, alias)."""
        version_id = body.get("room_version", self.default_room_version)
        if not isinstance(version_id, str) or version_id not in SUPPORTED_ROOM_VERSIONS:
            raise MatrixError(400, Codes.UNSUPPORTED_ROOM_VERSION, "Unsupported room version")
        rv = KNOWN_ROOM_VERSIONS[version_id]
        visibility = body.get("visibility", "private")
        preset_name = body.get("preset") or ("public_chat" if visibility == "public" else "private_chat")
        if preset_name not in PRESETS:
            raise MatrixError(400, Codes.INVALID_PARAM, "Unknown preset")
        preset = PRESETS[preset_name]
        invites = body.get("invite", [])
        if not isinstance(invites, list) or not all(isinstance(i, str) for i in invites):
            raise bad_json("invite must be a list of user IDs")
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or not all(
            isinstance(s, dict) and isinstance(s.get("type"), str) and isinstance(s.get("content"), dict)
            for s in initial_state
        ):
            raise bad_json("initial_state must be a list of state events")
        alias: str | None = None
        if body.get("room_alias_name") is not None:
            name = body["room_alias_name"]
            if not isinstance(name, str) or not name or ":" in name:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room_alias_name")
            alias = f"#{name}:{self.server_name}"
            if len(alias.encode()) > 255 or any(c.isspace() for c in name):
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room_alias_name")
            if await self.aliases.get(alias, ask=False):
                raise MatrixError(400, Codes.ROOM_IN_USE, "Room alias already taken")

        create_content: dict[str, Any] = dict(body.get("creation_content") or {})
        create_content["room_version"] = version_id
        if not rv.implicit_room_creator:
            create_content["creator"] = user_id
        room_id: str | None = None
        if not rv.room_id_is_create_event_hash:
            room_id = (
                "!"
                + "".join(secrets.choice(string.ascii_letters) for _ in range(18))
                + ":"
                + self.server_name
            )
        create_event, _ = await self.creator.create_room_event(
            room_version=rv, room_id=room_id, sender=user_id, content=create_content
        )
        room_id = create_event.room_id
        await self._send(
            room_id, user_id, "m.room.member", await self._member_content(user_id, "join"), user_id
        )

        power = default_power_levels(user_id, rv.privileged_creators)
        if preset_name == "trusted_private_chat" and not rv.privileged_creators:
            for invitee in invites:
                power["users"][invitee] = 100
        override = body.get("power_level_content_override")
        if isinstance(override, dict):
            power.update(override)
        await self._send(room_id, user_id, "m.room.power_levels", power, "")
        if alias is not None:
            await self._send(room_id, user_id, "m.room.canonical_alias", {"alias": alias}, "")
        state_set = {(s["type"], s.get("state_key", "")) for s in initial_state}
        for type_, key, content in (
            ("m.room.join_rules", "", {"join_rule": preset["join_rule"]}),
            ("m.room.history_visibility", "", {"history_visibility": preset["history_visibility"]}),
            ("m.room.guest_access", "", {"guest_access": preset["guest_access"]}),
        ):
            if (type_, key) not in state_set:
                await self._send(room_id, user_id, type_, content, key)
        for state in initial_state:
            await self._send(room_id, user_id, state["type"], state["content"], state.get("state_key", ""))
        if isinstance(body.get("name"), str):
            await self._send(room_id, user_id, "m.room.name", {"name": body["name"]}, "")
        if isinstance(body.get("topic"), str):
            await self._send(room_id, user_id, "m.room.topic", {"topic": body["topic"]}, "")
        if alias is not None:
            await self.aliases.create(alias, room_id, user_id)
        if visibility == "public":
            await self.events.set_room_public(room_id, True)
        for invitee in invites:
            try:
                await self.invite(user_id, room_id, invitee, {"is_direct": bool(body.get("is_direct"))})
            except MatrixError as e:
                # The spec: an invitee who blocks invites is left out; the room still stands.
                if e.errcode != Codes.INVITE_BLOCKED:
                    raise
        return room_id, alias

    async def resolve_room(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """Room ID (and candidate servers) for a room ID or alias."""
        if room_id_or_alias.startswith("#"):
            found = await self.aliases.get(room_id_or_alias)
            if found is None:
                raise MatrixError(404, Codes.NOT_FOUND, "Room alias not found")
            return found[0], [self.server_name]
        if not room_id_or_alias.startswith("!"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Not a room ID or alias")
        return room_id_or_alias, []

    async def join(
        self,
        user_id: str,
        room_id_or_alias: str,
        servers: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        room_id, alias_servers = await self.resolve_room(room_id_or_alias)
        await self.refuse_if_blocked(room_id)
        if await self.events.get_room_version(room_id) is None:
            if self.remote_join is None:
                raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
            candidates = list(servers or []) + alias_servers
            if ":" in room_id:
                candidates.append(room_id.split(":", 1)[1])
            return await self.remote_join(user_id, room_id, candidates, extra or {})
        membership = await self.events.get_membership(room_id, user_id)
        if membership is not None and membership[0] == "join":
            return room_id
        content = await self._member_content(user_id, "join", extra)
        await self._send(room_id, user_id, "m.room.member", content, user_id)
        return room_id

    async def invite(
        self, sender: str, room_id: str, target: str, extra: dict[str, Any] | None = None
    ) -> None:
        await self.require_joined(sender, room_id)
        await self.refuse_if_blocked(room_id)
        membership = await self.events.get_membership(room_id, target)
        if membership is not None and membership[0] == "join":
            raise forbidden(f"{target} is already in the room")
        if membership is not None and membership[0] == "ban":
            raise forbidden(f"{target} is banned from the room")
        if not self.is_local_user(target):
            if self.remote_invite is None:
                raise MatrixError(403, Codes.FORBIDDEN, "Federation is not enabled")
            profile = await self.invitee_profile(target)
            await self.remote_invite(sender, room_id, target, {**profile, **(extra or {})})
            return
        if not await self.user_exists(target):
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown user")
        await self.invite_permission.check(target)
        content = {"membership": "invite", **await self.invitee_profile(target), **(extra or {})}
        await self._send(room_id, sender, "m.room.member", content, target)

    async def invitee_profile(self, target: str) -> dict[str, str]:
        """The invitee's display name and avatar for their invite (none when the option is
        off, or their server will not say)."""
        if not self.profile_on_invite:
            return {}
        profile: Any
        if self.is_local_user(target):
            profile = await self.accounts.get_user(target) or {}
        elif self.remote_profile is not None:
            try:
                profile = await self.remote_profile(target, None)
            except MatrixError as e:
                # As Synapse: the invite goes out without them.
                log.info("no profile for the invite of %s: %s", target, e.message)
                return {}
        else:
            return {}
        return {k: v for k in PROFILE_KEYS if isinstance(v := profile.get(k), str) and v}

    async def set_membership(
        self, sender: str, room_id: str, target: str, membership: str, reason: str | None = None
    ) -> None:
        """leave / kick (leave of another user) / ban / unban (leave after ban)."""
        await self._require_room(room_id)
        if sender != target or membership != "leave":
            # Only members learn anything about other members' state (an invitee may still
            # reject by leaving).
            await self.require_joined(sender, room_id)
        current = await self.events.get_membership(room_id, target)
        if membership == "leave" and sender == target and current is None:
            raise forbidden("You are not joined to this room")
        if membership == "leave" and sender != target and (current is None or current[0] in ("leave",)):
            raise forbidden(f"{target} is not in the room")
        if membership == "leave" and sender == target:
            for guard in self.leave_guards:
                await guard(room_id, target)
        content: dict[str, Any] = {"membership": membership}
        if reason:
            content["reason"] = reason
        await self._send(room_id, sender, "m.room.member", content, target)

    async def refuse_if_blocked(self, room_id: str) -> None:
        """403 for a room a server admin blocked: no one here joins, knocks or is invited."""
        if await self.events.room_blocked_by(room_id) is not None:
            raise forbidden("This room has been blocked on this server")

    async def require_joined(self, user_id: str, room_id: str) -> None:
        """403 unless the user is joined; the same answer whether or not the room exists."""
        membership = await self.events.get_membership(room_id, user_id)
        if membership is None or membership[0] != "join":
            raise forbidden("You are not joined to this room")

    async def _require_room(self, room_id: str) -> None:
        if await self.events.get_room_version(room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
