"""This server as a Policy Server (server-server API, "Policy Servers", spec v1.18).

With `policy_server.enabled`, other servers in a room whose `m.room.policy` names this
server (and this server's policy key) ask it, with `POST /_matrix/policy/v1/sign`, to sign
each event before they send it. It signs unless the operator's rules refuse the event:
a string anywhere in its content containing one of `keywords` (case-insensitive), or a
sender or sender's server matching `blocked_users` / `blocked_servers` (globs, `*` and
`?`). A refusal is 400 `M_FORBIDDEN`, which the asking server shows its client.

It answers only for rooms it serves: a local user is joined (the spec gives a Policy
Server that agency) and the room's `m.room.policy` names this server with this key;
otherwise 403 `M_FORBIDDEN`. The event must be well-formed for the room version and its
content hash must match: the signature covers the redacted event and the hash in it, so
signing an event whose content was not the one read would vouch for other content.

The policy key is its own ed25519 key (`policy_server.signing_key_path`, created on first
start), apart from the server's signing key, as the spec advises; its public half is
served at `GET /.well-known/matrix/policy_server` for room admins to put in the state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.pdu import PduError, parse_pdu
from bridge.policy import KEY_ID, is_exempt
from homeserver.api.http import json_response
from homeserver.config import PolicyServerConfig
from homeserver.errors import Codes, MatrixError
from homeserver.events import Event, check_content_hash, sign_event
from homeserver.events.identifiers import domain_of
from homeserver.events.signing import SigningKey, encode_verify_key
from homeserver.handlers.push_eval import glob_matches
from homeserver.server import HomeServer, load_or_create_signing_key

if TYPE_CHECKING:
    from bridge.policy import RoomPolicy

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/matrix/policy_server"
KEY_VERSION = KEY_ID.partition(":")[2]
# Content strings are searched this deep; deeper nesting is refused as unreadable.
MAX_DEPTH = 16


def load_or_create_policy_key(path: str) -> SigningKey:
    """The policy key at `path` (the signing key file format), created if missing."""
    return load_or_create_signing_key(path, KEY_VERSION)


def _strings(value: Any, depth: int = 0) -> list[str]:
    if isinstance(value, str):
        return [value]
    if depth >= MAX_DEPTH:
        raise MatrixError(400, Codes.FORBIDDEN, "The event's content is nested too deeply to check")
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k, depth + 1), *_strings(v, depth + 1))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, depth + 1)]
    return []


class PolicyRules:
    """The operator's rules: why an event is refused, if it is."""

    def __init__(self, config: PolicyServerConfig) -> None:
        self.keywords = [k.casefold() for k in config.keywords]
        self.blocked_users = list(config.blocked_users)
        self.blocked_servers = list(config.blocked_servers)

    def refusal(self, event: Event) -> str | None:
        """Which rule refuses the event, or None."""
        sender = event.sender
        if any(glob_matches(p, sender, False) for p in self.blocked_users):
            return "sender"
        if any(glob_matches(p, domain_of(sender), False) for p in self.blocked_servers):
            return "server"
        if self.keywords:
            text = [s.casefold() for s in _strings(event.content)]
            if any(k in s for k in self.keywords for s in text):
                return "keyword"
        return None


class PolicyServer:
    def __init__(
        self, hs: HomeServer, config: PolicyServerConfig, key: SigningKey, rooms: RoomPolicy
    ) -> None:
        self.hs = hs
        self.key = key
        self.public_key = encode_verify_key(key)
        self.rooms = rooms
        self.rules = PolicyRules(config)

    def sign_checked(self, event: Event) -> dict[str, Any]:
        """The signature answer for an event of a room this server serves, or MatrixError
        (400 M_FORBIDDEN) when the rules refuse it."""
        reason = self.rules.refusal(event)
        if reason is not None:
            log.info("policy server refuses %s in %s (%s rule)", event.event_id, event.room_id, reason)
            raise MatrixError(
                400, Codes.FORBIDDEN, "This event was refused as probable spam by the room's policy server"
            )
        signed = sign_event(event.pdu, self.hs.server_name, self.key, event.room_version)
        return {self.hs.server_name: {KEY_ID: signed["signatures"][self.hs.server_name][KEY_ID]}}

    async def serves(self, room_id: str) -> bool:
        """Whether this server is the room's Policy Server: named with this key, and joined."""
        ps = await self.rooms.policy_server(room_id)
        return ps is not None and ps.server_name == self.hs.server_name and ps.public_key == self.public_key

    async def on_sign(self, request: web.Request, origin: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise MatrixError(400, Codes.NOT_JSON, "The body must be a PDU")
        room_id = body.get("room_id")
        rv = await self.hs.events.get_room_version(room_id) if isinstance(room_id, str) else None
        if rv is None or not isinstance(room_id, str) or not await self.serves(room_id):
            raise MatrixError(403, Codes.FORBIDDEN, "This server is not the policy server of that room")
        try:
            event = parse_pdu(body, rv)
        except PduError as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid event: {e}") from None
        # parse_pdu redacts an event whose hash does not match: what would be signed is then
        # not what was read.
        if not check_content_hash(event.pdu):
            raise MatrixError(400, Codes.BAD_JSON, "The event's content does not match its hash")
        if event.room_id != room_id:
            raise MatrixError(400, Codes.BAD_JSON, "Invalid event: no room ID")
        if is_exempt(event):
            raise MatrixError(400, Codes.BAD_JSON, "The room's m.room.policy state event is not signed")
        return self.sign_checked(event)

    async def well_known(self, request: web.Request) -> web.Response:
        return json_response({"public_keys": {"ed25519": self.public_key}})
