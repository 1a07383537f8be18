"""Rooms that use a Policy Server (server-server API, "Policy Servers", spec v1.18): the
room member's side.

A room uses a Policy Server when its current state holds a valid `m.room.policy` (empty
state key, a `via` server name and an ed25519 key in `public_keys`) and the `via` server
has a joined member. Then every event but that state event itself needs the Policy
Server's signature, `ed25519:policy_server` under the `via` server's name, made with the
key in the room's state (not a key the server publishes):
- a local event is sent to the Policy Server (`POST /_matrix/policy/v1/sign`) once built
  and authorised, before it is stored; a refusal goes back to the client as the Policy
  Server worded it, and the event is never stored or sent (`sign_local`, the event
  creator's hook);
- a remote event without a valid signature is sent for one; if it still has none it is
  soft-failed: stored, never shown, never built upon (`allows_remote`).
When this server is itself the room's Policy Server (`bridge.policy_server`), it signs
without a request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.client import FederationClient, FederationError, RemoteError, Unreachable
from bridge.pdu import POLICY_SERVER_KEY_ID
from homeserver.errors import Codes, MatrixError
from homeserver.events import Event, SignatureError, verify_event_signature
from homeserver.events.identifiers import is_valid_server_name
from homeserver.events.model import pdu_json
from homeserver.events.signing import decode_verify_key
from homeserver.server import HomeServer

if TYPE_CHECKING:
    from bridge.policy_server import PolicyServer

log = logging.getLogger(__name__)

POLICY_KEY = ("m.room.policy", "")
KEY_ID = POLICY_SERVER_KEY_ID
SIGN_PATH = "/_matrix/policy/v1/sign"
# A Policy Server checks content (media scanning, say), so it gets longer than a
# transaction's request; the sender's client waits meanwhile.
SIGN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class PolicyServerInfo:
    server_name: str
    public_key: str


def policy_from_content(content: object) -> PolicyServerInfo | None:
    """The Policy Server an `m.room.policy` state event's content names, if it is valid."""
    if not isinstance(content, dict):
        return None
    via, keys = content.get("via"), content.get("public_keys")
    if not isinstance(via, str) or not is_valid_server_name(via) or not isinstance(keys, dict):
        return None
    key = keys.get("ed25519")
    if not isinstance(key, str):
        return None
    try:
        decode_verify_key(KEY_ID, key)
    except ValueError:
        return None
    return PolicyServerInfo(via, key)


def is_exempt(event: Event) -> bool:
    """The room's Policy Server setting itself is never sent for signing."""
    return event.type == POLICY_KEY[0] and event.state_key == POLICY_KEY[1]


def has_valid_signature(event: Event, ps: PolicyServerInfo) -> bool:
    if KEY_ID not in (event.signatures.get(ps.server_name) or {}):
        return False
    try:
        key = decode_verify_key(KEY_ID, ps.public_key)
        verify_event_signature(event.pdu, ps.server_name, key, event.room_version)
    except (SignatureError, ValueError):
        return False
    return True


def _add_signature(event: Event, ps: PolicyServerInfo, answer: object) -> None:
    """Add the Policy Server's signature from its answer, keeping every other signature
    (the Policy Server may share its name with the event's origin)."""
    sigs = answer.get(ps.server_name) if isinstance(answer, dict) else None
    sig = sigs.get(KEY_ID) if isinstance(sigs, dict) else None
    if not isinstance(sig, str):
        raise MatrixError(502, Codes.UNKNOWN, "The room's policy server answered without a signature")
    event.signatures.setdefault(ps.server_name, {})[KEY_ID] = sig


class RoomPolicy:
    def __init__(
        self,
        hs: HomeServer,
        client: FederationClient,
        room_servers: Callable[[str], Awaitable[set[str]]],
    ) -> None:
        self.hs = hs
        self.client = client
        self.room_servers = room_servers
        # This server acting as a Policy Server, if configured (bridge.policy_server).
        self.local: PolicyServer | None = None

    async def policy_server(self, room_id: str, *, locked: bool = False) -> PolicyServerInfo | None:
        """The room's Policy Server, if it uses one (`locked`: under the room lock)."""
        state = await self.hs.events.get_current_state(room_id, [POLICY_KEY], locked=locked)
        stored = state.get(POLICY_KEY)
        if stored is None:
            return None
        ps = policy_from_content(stored.event.content)
        if ps is None or (ps.server_name == self.hs.server_name and self.local is None):
            # Named but not one: as Synapse does, the room is taken to have none. Otherwise a
            # room's admins could stop this server's users sending there, and have every
            # remote event soft-failed.
            return None
        if ps.server_name not in await self.room_servers(room_id):
            return None
        return ps

    async def request_signature(self, event: Event, ps: PolicyServerInfo) -> None:
        """Get the Policy Server's signature onto `event`, verified against the room's key.
        Raises MatrixError: a refusal with the Policy Server's own status and words."""
        if ps.server_name == self.hs.server_name and self.local is not None:
            answer: object = self.local.sign_checked(event)
        else:
            try:
                pdu = {k: v for k, v in pdu_json(event).items() if k != "unsigned"}  # a local txn ID
                answer = await self.client.post(ps.server_name, SIGN_PATH, pdu, timeout=SIGN_TIMEOUT_S)
            except RemoteError as e:
                status = e.status if 400 <= e.status < 500 else 502
                raise MatrixError(
                    status, e.errcode, str(e.body.get("error", "Refused by the policy server"))
                ) from None
            except (Unreachable, FederationError) as e:
                log.warning("policy server %s for %s unreachable: %s", ps.server_name, event.room_id, e)
                raise MatrixError(502, Codes.UNKNOWN, "Could not reach the room's policy server") from None
        _add_signature(event, ps, answer)
        if not has_valid_signature(event, ps):
            event.signatures[ps.server_name].pop(KEY_ID, None)
            if not event.signatures[ps.server_name]:
                del event.signatures[ps.server_name]
            raise MatrixError(
                502, Codes.UNKNOWN, "The policy server's signature does not match the key in the room's state"
            )

    async def sign_local(self, event: Event) -> None:
        """The event creator's hook: a new local event, built and authorised, under the room
        lock. Raises MatrixError when it must not be sent."""
        if is_exempt(event):
            return
        ps = await self.policy_server(event.room_id, locked=True)
        if ps is not None:
            await self.request_signature(event, ps)

    async def allows_remote(self, event: Event) -> bool:
        """Whether a remote event is recommended for the room: always, unless the room
        uses a Policy Server that did not sign it, and will not when asked (a valid
        signature is added to the event)."""
        if is_exempt(event):
            return True
        ps = await self.policy_server(event.room_id)
        if ps is None or has_valid_signature(event, ps):
            return True
        try:
            await self.request_signature(event, ps)
        except MatrixError as e:
            log.info("policy server %s refuses %s: %s", ps.server_name, event.event_id, e.errcode)
            return False
        return True

    async def all_signed(self, events: list[Event]) -> bool:
        """Whether every event of a run already carries a valid signature, if needed."""
        ps = await self.policy_server(events[0].room_id)
        return ps is None or all(has_valid_signature(e, ps) for e in events)
