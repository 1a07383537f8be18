"""Joins, invites and leaves across servers, both directions.

Outbound (a local user acts on a room hosted elsewhere):
- `remote_join`: make_join -> sign the template -> send_join v2 -> verify every returned state
  and auth chain event (signatures, hashes, auth rules) -> store the room with the returned
  state as its current state and the join as its only forward extremity.
- `remote_invite`: build the invite locally, have the invitee's server sign it (invite v2),
  then persist and send it like any local event.
- `remote_leave`: make_leave/send_leave v2, used to reject an invite to a room this server is
  not in (falling back to an out-of-band leave if no server answers), or to retract a knock.
- `remote_knock`: make_knock/send_knock v1 (room versions 7+); the knock is stored like a
  remote invite (an outlier plus the user's membership), with the room state returned by the
  resident server (verified PDUs, stripped) in its `unsigned.knock_room_state`. An accepted
  knock arrives as an invite, then the user joins as after any remote invite.

Inbound (another server acts on a room this server is in): make_join, send_join v2,
invite v2, make_leave, send_leave v2, make_knock, send_knock v1.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.client import FederationClient, FederationError, RemoteError, fed_path
from bridge.events_in import EventRejected, FederationEventHandler, _auth_failure
from bridge.pdu import PduError, parse_pdu, verify_signatures
from bridge.state import StateTracker, write_outlier_status
from homeserver.appservice.accounts import local_user_exists
from homeserver.errors import Codes, MatrixError, forbidden, not_found
from homeserver.events import (
    AuthError,
    Event,
    auth_types_for_event,
    build_event,
    check_auth,
    get_room_version,
    pdu_json,
    sign_event,
)
from homeserver.events.identifiers import domain_of
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, UnsupportedRoomVersionError
from homeserver.handlers.client_format import STRIPPED_STATE_TYPES
from homeserver.server import HomeServer
from homeserver.state import get_auth_chain

log = logging.getLogger(__name__)

MAX_PREV_EVENTS = 10
# Stripped state events whose senders' servers a knock's retraction may ask (the remote
# room's server chose them: a few, not a list to walk).
MAX_STATE_SERVERS = 8
SUPPORTED_VERSIONS = sorted(KNOWN_ROOM_VERSIONS)


def _domain(identifier: str) -> str:
    try:
        return domain_of(identifier)
    except ValueError:
        return ""


class MembershipHandler:
    def __init__(
        self,
        hs: HomeServer,
        client: FederationClient,
        tracker: StateTracker,
        inbound: FederationEventHandler,
    ) -> None:
        self.hs = hs
        self.events = hs.events
        self.client = client
        self.tracker = tracker
        self.inbound = inbound
        self.server_name = hs.server_name
        # Called with (room_id, server) after a remote join, to fetch some history.
        self.after_join: list[Any] = []
        # Sends a membership event another server submitted here (send_join, send_leave,
        # send_knock) on to the other servers in the room, as the spec asks of the
        # resident server: (event, the submitting server).
        self.relay: Callable[[Event, str], Awaitable[None]] | None = None

    # Building local events on top of the current state -----------------------------------------

    async def build_local_event(
        self, room_id: str, type: str, sender: str, content: dict[str, Any], state_key: str | None
    ) -> tuple[Event, dict[tuple[str, str], Event], Event | None]:
        rv = await self.events.get_room_version(room_id)
        if rv is None:
            raise not_found("Unknown room")
        needed = auth_types_for_event(rv, type, sender, state_key, content)
        state = await self.events.get_current_state(room_id, set(needed) | {("m.room.create", "")})
        create = state.get(("m.room.create", ""))
        auth_map = {k: v.event for k, v in state.items() if k in set(needed)}
        prevs, depth = await self.events.get_extremities_and_depth(room_id)
        event = build_event(
            room_version=rv,
            room_id=room_id,
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_event_ids=prevs[:MAX_PREV_EVENTS],
            auth_event_ids=sorted(e.event_id for e in auth_map.values()),
            depth=min(depth + 1, 2**63 - 1),
            origin_server_ts=self.hs.clock.time_ms(),
            server_name=self.server_name,
            signing_key=self.hs.signing_key,
        )
        return event, auth_map, create.event if create else None

    async def announce_local(self, event: Event, stream_id: int) -> None:
        """What EventCreator does after persisting a local event: wake syncs, tell listeners."""
        users = [event.state_key] if event.type == "m.room.member" and event.state_key else []
        self.hs.notifier.notify(rooms=[event.room_id], users=users)
        for listener in self.hs.creator.listeners:
            await listener(event, stream_id)

    # Outbound: join -----------------------------------------------------------------------------

    async def remote_join(
        self, user_id: str, room_id: str, candidates: list[str], extra: dict[str, Any]
    ) -> str:
        servers = [s for s in dict.fromkeys(candidates) if s and s != self.server_name]
        if not servers:
            raise MatrixError(404, Codes.NOT_FOUND, "No known servers to join this room through")
        last: Exception | None = None
        for server in servers:
            try:
                return await self._join_via(server, user_id, room_id, extra)
            except RemoteError as e:
                last = e
                if e.status == 403 or (
                    e.status == 400
                    and e.errcode in (Codes.INCOMPATIBLE_ROOM_VERSION, Codes.UNSUPPORTED_ROOM_VERSION)
                ):
                    raise MatrixError(
                        e.status,
                        e.errcode,
                        f"Remote server refused the join: {e.body.get('error', '')}"[:300],
                    ) from None
                log.info("join of %s via %s failed: %s", room_id, server, e)
            except (FederationError, PduError, EventRejected) as e:
                last = e
                log.info("join of %s via %s failed: %s", room_id, server, e)
        raise MatrixError(502 if last else 404, Codes.UNKNOWN, f"Failed to join the room: {last}"[:300])

    async def _join_via(self, server: str, user_id: str, room_id: str, extra: dict[str, Any]) -> str:
        # PDUs for the room that arrive meanwhile wait for the join to be stored; with several
        # workers, also those reaching another worker, once the join's record is written.
        with self.inbound.joining(room_id):
            await self.inbound.join_recorded(room_id)
            await self._make_and_send_join(server, user_id, room_id, extra)
        for hook in self.after_join:
            await hook(room_id, server)
        return room_id

    async def _make_and_send_join(
        self, server: str, user_id: str, room_id: str, extra: dict[str, Any]
    ) -> None:
        made = await self.client.get(
            server,
            fed_path("/_matrix/federation/v1/make_join/{}/{}", room_id, user_id),
            query=[("ver", v) for v in SUPPORTED_VERSIONS],
        )
        rv = self._room_version_of(made)
        template = made.get("event")
        if not isinstance(template, dict):
            raise PduError("make_join returned no event")
        content = dict(template.get("content") or {})
        content["membership"] = "join"
        profile = await self.hs.accounts.get_profile(user_id)
        if profile is not None:
            if profile[0]:
                content["displayname"] = profile[0]
            if profile[1]:
                content["avatar_url"] = profile[1]
        content.update({k: v for k, v in extra.items() if k not in ("membership",)})
        join = self._from_template(rv, template, room_id, user_id, content)
        response = await self.client.put(
            server,
            fed_path("/_matrix/federation/v2/send_join/{}/{}", room_id, join.event_id),
            pdu_json(join),
            timeout=120,
        )
        if not isinstance(response, dict):
            raise PduError("send_join returned no object")
        returned = response.get("event")
        if isinstance(returned, dict):
            # Restricted joins come back countersigned by the resident server.
            signed = parse_pdu(returned, rv)
            if signed.event_id == join.event_id:
                join = signed
        await self._store_join(server, join, response)

    def _room_version_of(self, made: Any) -> RoomVersion:
        version = made.get("room_version", "1") if isinstance(made, dict) else None
        try:
            return get_room_version(str(version))
        except UnsupportedRoomVersionError:
            raise MatrixError(
                400, Codes.UNSUPPORTED_ROOM_VERSION, f"Room version {version} is not supported"
            ) from None

    def _from_template(
        self, rv: RoomVersion, template: dict[str, Any], room_id: str, user_id: str, content: dict[str, Any]
    ) -> Event:
        if template.get("room_id") != room_id or template.get("sender") != user_id:
            raise PduError("make_join/make_leave template is for another room or user")
        if template.get("type") != "m.room.member" or template.get("state_key") != user_id:
            raise PduError("template is not a membership event for this user")
        prevs = template.get("prev_events")
        auths = template.get("auth_events")
        depth = template.get("depth")
        if not isinstance(prevs, list) or not isinstance(auths, list) or not isinstance(depth, int):
            raise PduError("malformed template")
        return build_event(
            room_version=rv,
            room_id=room_id,
            type="m.room.member",
            sender=user_id,
            content=content,
            state_key=user_id,
            prev_event_ids=[p for p in prevs if isinstance(p, str)],
            auth_event_ids=[a for a in auths if isinstance(a, str)],
            depth=depth,
            origin_server_ts=self.hs.clock.time_ms(),
            server_name=self.server_name,
            signing_key=self.hs.signing_key,
        )

    async def _store_join(self, server: str, join: Event, response: dict[str, Any]) -> None:
        rv = join.room_version
        room_id = join.room_id
        state_events = await self.inbound.parse_and_verify(response.get("state"), room_id, rv)
        chain_events = await self.inbound.parse_and_verify(response.get("auth_chain"), room_id, rv)
        by_id: dict[str, Event] = {e.event_id: e for e in chain_events + state_events}
        # v12 rooms: the create event is what the room ID is derived from.
        create = next((e for e in by_id.values() if e.type == "m.room.create" and e.state_key == ""), None)
        if create is None:
            raise PduError("send_join response has no create event")
        if rv.room_id_is_create_event_hash and "$" + room_id[1:] != create.event_id:
            raise PduError("create event does not match the room ID")
        if create.content.get("room_version", "1") != rv.identifier:
            raise PduError("create event names another room version")
        # Check every event against its own auth events, oldest first.
        for ev in sorted(by_id.values(), key=lambda e: (e.depth, e.event_id)):
            auth = [by_id[a] for a in ev.auth_event_ids if a in by_id]
            if len(auth) != len(ev.auth_event_ids):
                ev.rejected_reason = "auth events missing from the send_join response"
                continue
            ev.rejected_reason = _auth_failure(ev, auth, create)
        state: dict[tuple[str, str], Event] = {}
        for ev in state_events:
            if ev.is_state() and ev.rejected_reason is None:
                state[ev.state_key_tuple] = ev
        state[("m.room.create", "")] = create
        auth_keys = auth_types_for_event(rv, join.type, join.sender, join.state_key, join.content)
        try:
            check_auth(
                join, {k: state[k] for k in auth_keys if k in state}, create, validate_auth_events=False
            )
        except AuthError as e:
            raise PduError(f"our join is not allowed by the returned state: {e}") from None
        state_map = {k: (v.event_id, v.membership) for k, v in state.items()}
        after = {k: v.event_id for k, v in state.items()}
        after[join.state_key_tuple] = join.event_id
        prepared = await self.tracker.prepare(join, after, [])
        rejected = [e for e in by_id.values() if e.rejected_reason is not None]

        async def extra(conn: AsyncConnection, _sid: int) -> None:
            for ev in rejected:
                await write_outlier_status(conn, ev, ev.rejected_reason)
            await self.tracker.write(conn, prepared)

        async with self.hs.creator.room_lock(room_id):
            stream_id = await self.events.persist_remote_join(
                join, list(by_id.values()), state_map, self.hs.clock.time_ms(), extra
            )
        self.hs.notifier.notify(rooms=[room_id], users=[join.sender])
        for listener in self.inbound.accepted_listeners:
            await listener(join, stream_id, False)

    # Outbound: invite --------------------------------------------------------------------------

    async def remote_invite(self, sender: str, room_id: str, target: str, extra: dict[str, Any]) -> None:
        destination = _domain(target)
        content = {"membership": "invite", **extra}
        async with self.hs.creator.room_lock(room_id):
            event, auth_map, create = await self.build_local_event(
                room_id, "m.room.member", sender, content, target
            )
            try:
                check_auth(event, auth_map, create)
            except AuthError as e:
                raise forbidden(str(e)) from None
            # Spec v1.16 (MSC4311): the room's preview state as full PDUs, the create event
            # among them, so the invitee's server can check them (it strips them for clients).
            stripped = await self.preview_pdus(room_id)
            try:
                response = await self.client.put(
                    destination,
                    fed_path("/_matrix/federation/v2/invite/{}/{}", room_id, event.event_id),
                    {
                        "event": pdu_json(event),
                        "room_version": event.room_version.identifier,
                        "invite_room_state": stripped,
                    },
                )
            except RemoteError as e:
                # A blocked invite keeps its code (the spec's invite permission); other refusals
                # are the inviter's M_FORBIDDEN.
                refused = Codes.INVITE_BLOCKED if e.errcode == Codes.INVITE_BLOCKED else Codes.FORBIDDEN
                raise MatrixError(
                    403 if e.status == 403 else 502,
                    refused if e.status == 403 else Codes.UNKNOWN,
                    f"The invitee's server refused the invite: {e.body.get('error', '')}"[:300],
                ) from None
            except FederationError as e:
                raise MatrixError(
                    502, Codes.UNKNOWN, f"Could not reach the invitee's server: {e}"[:300]
                ) from None
            returned = response.get("event") if isinstance(response, dict) else None
            signed = parse_pdu(returned, event.room_version)
            if signed.event_id != event.event_id:
                raise MatrixError(502, Codes.UNKNOWN, "The invitee's server changed the invite")
            await verify_signatures(signed, self.inbound.keyring)
            sigs = signed.signatures.get(destination)
            if not isinstance(sigs, dict) or not sigs:
                raise MatrixError(502, Codes.UNKNOWN, "The invitee's server did not sign the invite")
            from bridge.keys import KeyFetchError
            from homeserver.events import verify_event_signature

            ok = False
            for key_id in sigs:
                try:
                    vk = await self.inbound.keyring.get_verify_key(
                        destination, key_id, signed.origin_server_ts
                    )
                    verify_event_signature(signed.pdu, destination, vk, signed.room_version)
                    ok = True
                    break
                except (KeyFetchError, ValueError):
                    continue
            if not ok:
                raise MatrixError(502, Codes.UNKNOWN, "The invitee's server's signature does not verify")
            stream_id = await self.events.persist_event(signed)
        await self.announce_local(signed, stream_id)

    # Outbound: knock -----------------------------------------------------------------------------

    async def remote_knock(
        self, user_id: str, room_id: str, candidates: list[str], content: dict[str, Any]
    ) -> str:
        servers = [s for s in dict.fromkeys(candidates) if s and s != self.server_name]
        if ":" in room_id and room_id.split(":", 1)[1] not in servers:
            servers.append(room_id.split(":", 1)[1])
        servers = [s for s in servers if s != self.server_name]
        if not servers:
            raise MatrixError(404, Codes.NOT_FOUND, "No known servers to knock through")
        last: Exception | None = None
        for server in servers:
            try:
                await self._knock_via(server, user_id, room_id, content)
                return room_id
            except RemoteError as e:
                last = e
                if e.status in (400, 403):
                    raise MatrixError(
                        e.status,
                        e.errcode,
                        f"Remote server refused the knock: {e.body.get('error', '')}"[:300],
                    ) from None
                log.info("knock on %s via %s failed: %s", room_id, server, e)
            except (FederationError, PduError) as e:
                last = e
                log.info("knock on %s via %s failed: %s", room_id, server, e)
        raise MatrixError(502, Codes.UNKNOWN, f"Failed to knock on the room: {last}"[:300])

    async def _knock_via(self, server: str, user_id: str, room_id: str, content: dict[str, Any]) -> None:
        made = await self.client.get(
            server,
            fed_path("/_matrix/federation/v1/make_knock/{}/{}", room_id, user_id),
            query=[("ver", v) for v in SUPPORTED_VERSIONS],
        )
        rv = self._room_version_of(made)
        if not rv.knock_join_rule:
            raise MatrixError(
                400, Codes.INCOMPATIBLE_ROOM_VERSION, "This room version does not support knocking"
            )
        template = made.get("event")
        if not isinstance(template, dict):
            raise PduError("make_knock returned no event")
        full = {k: v for k, v in content.items() if k != "membership"}
        full["membership"] = "knock"
        knock = self._from_template(rv, template, room_id, user_id, full)
        response = await self.client.put(
            server,
            fed_path("/_matrix/federation/v1/send_knock/{}/{}", room_id, knock.event_id),
            pdu_json(knock),
        )
        raw_state = response.get("knock_room_state") if isinstance(response, dict) else None
        stripped = await self._verified_stripped_state(raw_state, room_id, rv)
        stored = dict(knock.pdu)
        stored["unsigned"] = {**(stored.get("unsigned") or {}), "knock_room_state": stripped}
        await self._store_out_of_room_membership(Event(stored, rv))

    async def _verified_stripped_state(self, raw: Any, room_id: str, rv: RoomVersion) -> list[dict[str, Any]]:
        """Stripped state from a knock_room_state list: full PDUs must verify (others dropped);
        already-stripped entries (older servers) are kept as they are."""
        if not isinstance(raw, list):
            return []
        raw = raw[:50]
        pdus = [e for e in raw if isinstance(e, dict) and "signatures" in e]
        plain = [e for e in raw if isinstance(e, dict) and "signatures" not in e]
        verified = await self.inbound.parse_and_verify(pdus, room_id, rv)
        out = [
            {"type": e.type, "state_key": e.state_key, "sender": e.sender, "content": e.content}
            for e in verified
            if e.is_state()
        ]
        for e in plain:
            if isinstance(e.get("type"), str) and isinstance(e.get("state_key"), str):
                out.append({k: e[k] for k in ("type", "state_key", "sender", "content") if k in e})
        return out

    async def preview_pdus(self, room_id: str) -> list[dict[str, Any]]:
        """The room's preview state (create, join rules, name ...) as full PDUs, as invites
        and knocks carry it to other servers (spec v1.16, MSC4311)."""
        state = await self.events.get_current_state(room_id, types=STRIPPED_STATE_TYPES)
        found = await self.events.get_pdus([s.event.event_id for s in state.values()])
        return [pdu_json(e) for e in found.values()]

    # Outbound: leave (rejecting a remote invite) ---------------------------------------------------

    async def remote_leave(self, user_id: str, room_id: str, servers: list[str]) -> None:
        membership = await self.events.get_membership(room_id, user_id)
        if membership is None:
            raise forbidden("You are not in this room")
        invite = (await self.events.get_pdus([membership[1]])).get(membership[1])
        candidates = list(servers)
        if invite is not None:
            candidates.append(_domain(invite.sender))
            # A knock's sender is local: ask the servers whose state the room's server sent
            # back with it (v12 room IDs name no server).
            unsigned = invite.pdu.get("unsigned")
            for key in ("knock_room_state", "invite_room_state"):
                summary = unsigned.get(key) if isinstance(unsigned, dict) else None
                for e in summary[:MAX_STATE_SERVERS] if isinstance(summary, list) else []:
                    if isinstance(e, dict) and isinstance(e.get("sender"), str):
                        candidates.append(_domain(e["sender"]))
        if ":" in room_id:
            candidates.append(room_id.split(":", 1)[1])
        for server in dict.fromkeys(c for c in candidates if c and c != self.server_name):
            try:
                made = await self.client.get(
                    server, fed_path("/_matrix/federation/v1/make_leave/{}/{}", room_id, user_id)
                )
                rv = self._room_version_of(made)
                template = made.get("event")
                if not isinstance(template, dict):
                    continue
                leave = self._from_template(rv, template, room_id, user_id, {"membership": "leave"})
                await self.client.put(
                    server,
                    fed_path("/_matrix/federation/v2/send_leave/{}/{}", room_id, leave.event_id),
                    pdu_json(leave),
                )
                await self._store_out_of_room_membership(leave)
                return
            except (FederationError, PduError, MatrixError) as e:
                log.info("leaving %s via %s failed: %s", room_id, server, e)
        if invite is None:
            raise MatrixError(502, Codes.UNKNOWN, "Could not reach any server in the room")
        # No server answered: reject the invite locally with an out-of-band leave.
        leave = build_event(
            room_version=invite.room_version,
            room_id=room_id,
            type="m.room.member",
            sender=user_id,
            content={"membership": "leave"},
            state_key=user_id,
            prev_event_ids=[invite.event_id],
            auth_event_ids=[invite.event_id],
            depth=invite.depth + 1,
            origin_server_ts=self.hs.clock.time_ms(),
            server_name=self.server_name,
            signing_key=self.hs.signing_key,
        )
        await self._store_out_of_room_membership(leave)

    async def _store_out_of_room_membership(self, event: Event) -> None:
        await self.events.persist_remote_membership(
            event, set_membership=True, created_ts=self.hs.clock.time_ms()
        )
        self.hs.notifier.notify(rooms=[event.room_id], users=[event.state_key or event.sender])

    # Inbound -------------------------------------------------------------------------------------

    async def _resident_room(self, origin: str, room_id: str, user_id: str) -> RoomVersion:
        rv = await self.events.get_room_version(room_id)
        if rv is None or not await self.inbound.is_participating(room_id):
            raise not_found("Unknown room")
        if _domain(user_id) != origin:
            raise forbidden("The user is not from the requesting server")
        if not await self.inbound.acl_allows(room_id, origin):
            raise forbidden("Server is denied by the room's server ACL")
        return rv

    async def _template(self, rv: RoomVersion, room_id: str, user_id: str, membership: str) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": membership}
        state_ids = await self.events.get_current_state_ids(room_id)
        if membership == "join":
            join_rule = await self.events.get_current_state(room_id, [("m.room.join_rules", "")])
            rule = join_rule.get(("m.room.join_rules", ""))
            current = await self.events.get_membership(room_id, user_id)
            if (
                rule is not None
                and rule.event.content.get("join_rule") in ("restricted", "knock_restricted")
                and (current is None or current[0] not in ("join", "invite"))
            ):
                via = await self._authorising_user(room_id, rule.event.content, user_id)
                if via is None:
                    raise MatrixError(
                        403, Codes.UNABLE_TO_AUTHORISE_JOIN, "You do not meet the join conditions"
                    )
                content["join_authorised_via_users_server"] = via
        needed = auth_types_for_event(rv, "m.room.member", user_id, user_id, content)
        auth_ids = sorted(state_ids[k] for k in needed if k in state_ids)
        prevs, depth = await self.events.get_extremities_and_depth(room_id)
        template: dict[str, Any] = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": content,
            "depth": min(depth + 1, 2**63 - 1),
            "prev_events": prevs[:MAX_PREV_EVENTS],
            "auth_events": auth_ids,
            "origin_server_ts": self.hs.clock.time_ms(),
        }
        # Refuse early when the membership could not be authorised.
        probe = Event(dict(template, hashes={"sha256": ""}, signatures={}), rv)
        auth_found = await self.events.get_pdus(auth_ids)
        auth_map = {e.state_key_tuple: e for e in auth_found.values()}
        create = await self.inbound.create_from_state(probe, state_ids)
        try:
            # This server countersigns restricted joins in send_join; assume it here.
            check_auth(probe, auth_map, create, validate_auth_events=False, is_signed_by=lambda _e, _s: True)
        except AuthError as e:
            raise forbidden(f"You are not allowed to {membership} this room: {e}") from None
        return template

    async def _authorising_user(self, room_id: str, join_rules: dict[str, Any], user_id: str) -> str | None:
        allow = join_rules.get("allow")
        if not isinstance(allow, list):
            return None
        for cond in allow:
            if not isinstance(cond, dict) or cond.get("type") != "m.room_membership":
                continue
            other = cond.get("room_id")
            if isinstance(other, str):
                m = await self.events.get_membership(other, user_id)
                if m is not None and m[0] == "join":
                    break
        else:
            return None
        pl = await self.events.get_current_state(room_id, [("m.room.power_levels", "")])
        pl_content = (
            pl[("m.room.power_levels", "")].event.content if ("m.room.power_levels", "") in pl else {}
        )
        invite_level = pl_content.get("invite", 0)
        users = pl_content.get("users", {})
        for member in sorted(await self.events.get_room_members(room_id, "join")):
            if (
                _domain(member) == self.server_name
                and users.get(member, pl_content.get("users_default", 0)) >= invite_level
            ):
                return member
        return None

    async def on_make_join(
        self, origin: str, room_id: str, user_id: str, versions: list[str]
    ) -> dict[str, Any]:
        rv = await self._resident_room(origin, room_id, user_id)
        if rv.identifier not in versions:
            raise MatrixError(
                400,
                Codes.INCOMPATIBLE_ROOM_VERSION,
                "Your server does not support this room's version",
                room_version=rv.identifier,
            )
        return {"event": await self._template(rv, room_id, user_id, "join"), "room_version": rv.identifier}

    async def on_make_knock(
        self, origin: str, room_id: str, user_id: str, versions: list[str]
    ) -> dict[str, Any]:
        rv = await self._resident_room(origin, room_id, user_id)
        if not rv.knock_join_rule or rv.identifier not in versions:
            raise MatrixError(
                400,
                Codes.INCOMPATIBLE_ROOM_VERSION,
                "Your homeserver does not support the features required to knock on this room",
                room_version=rv.identifier,
            )
        return {"event": await self._template(rv, room_id, user_id, "knock"), "room_version": rv.identifier}

    async def on_send_knock(self, origin: str, room_id: str, event_id: str, pdu: Any) -> dict[str, Any]:
        rv = await self.events.get_room_version(room_id)
        if rv is not None and not rv.knock_join_rule:
            raise MatrixError(
                400, Codes.INCOMPATIBLE_ROOM_VERSION, "This room version does not support knocking"
            )
        await self._receive_membership(origin, room_id, event_id, pdu, "knock")
        return {"knock_room_state": await self.preview_pdus(room_id)}

    async def on_make_leave(self, origin: str, room_id: str, user_id: str) -> dict[str, Any]:
        rv = await self._resident_room(origin, room_id, user_id)
        return {"event": await self._template(rv, room_id, user_id, "leave"), "room_version": rv.identifier}

    async def _receive_membership(
        self, origin: str, room_id: str, event_id: str, pdu: Any, membership: str
    ) -> Event:
        rv = await self.events.get_room_version(room_id)
        if rv is None or not await self.inbound.is_participating(room_id):
            raise not_found("Unknown room")
        try:
            event = parse_pdu(pdu, rv)
        except PduError as e:
            raise MatrixError(400, Codes.BAD_JSON, str(e)) from None
        if event.event_id != event_id or event.room_id != room_id:
            raise MatrixError(400, Codes.BAD_JSON, "Event ID or room ID does not match the path")
        if event.type != "m.room.member" or event.membership != membership or event.state_key != event.sender:
            raise MatrixError(400, Codes.BAD_JSON, f"Not a {membership} event")
        if _domain(event.sender) != origin:
            raise forbidden("The event's sender is not from the requesting server")
        if not await self.inbound.acl_allows(room_id, origin):
            raise forbidden("Server is denied by the room's server ACL")
        via = event.content.get("join_authorised_via_users_server")
        if membership == "join" and isinstance(via, str) and _domain(via) == self.server_name:
            event = Event(sign_event(event.pdu, self.server_name, self.hs.signing_key, rv), rv)
        try:
            await verify_signatures(event, self.inbound.keyring)
            await self.inbound.process(origin, event)
        except PduError as e:
            raise MatrixError(400, Codes.BAD_JSON, str(e)) from None
        except EventRejected as e:
            raise forbidden(str(e)) from None
        if self.relay is not None:
            await self.relay(event, origin)
        return event

    async def on_send_join(self, origin: str, room_id: str, event_id: str, pdu: Any) -> dict[str, Any]:
        event = await self._receive_membership(origin, room_id, event_id, pdu, "join")
        state = await self.tracker.state_before(event)
        if state is None:
            raise MatrixError(500, Codes.UNKNOWN, "State at the join is unknown")
        chain = await get_auth_chain([*list(state.values()), event.event_id], self.tracker.source)
        chain.discard(event.event_id)
        found = await self.events.get_pdus(list(set(state.values()) | chain))
        servers = {self.server_name} | {
            _domain(u) for u in await self.events.get_room_members(room_id, "join")
        }
        return {
            "origin": self.server_name,
            "event": pdu_json(event),
            "state": [pdu_json(found[e]) for e in sorted(state.values()) if e in found],
            "auth_chain": [pdu_json(found[e]) for e in sorted(chain) if e in found],
            "members_omitted": False,
            "servers_in_room": sorted(servers),
        }

    async def on_send_leave(self, origin: str, room_id: str, event_id: str, pdu: Any) -> dict[str, Any]:
        await self._receive_membership(origin, room_id, event_id, pdu, "leave")
        return {}

    async def on_invite(
        self, origin: str, room_id: str, event_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        version = body.get("room_version")
        try:
            rv = get_room_version(str(version))
        except UnsupportedRoomVersionError:
            raise MatrixError(
                400, Codes.INCOMPATIBLE_ROOM_VERSION, "Room version not supported", room_version=str(version)
            ) from None
        try:
            event = parse_pdu(body.get("event"), rv)
        except PduError as e:
            raise MatrixError(400, Codes.BAD_JSON, str(e)) from None
        if event.event_id != event_id or event.room_id != room_id:
            raise MatrixError(400, Codes.BAD_JSON, "Event ID or room ID does not match the path")
        target = event.state_key
        if event.type != "m.room.member" or event.membership != "invite" or target is None:
            raise MatrixError(400, Codes.BAD_JSON, "Not an invite event")
        if _domain(target) != self.server_name or not await local_user_exists(self.hs, target):
            raise not_found("Unknown user")
        await self.hs.rooms.invite_permission.check(target)
        await self.hs.rooms.refuse_if_blocked(room_id)
        if _domain(event.sender) != origin:
            raise forbidden("The inviter is not from the requesting server")
        known = await self.events.get_room_version(room_id)
        if known is not None and await self.inbound.is_participating(room_id):
            if not await self.inbound.acl_allows(room_id, origin):
                raise forbidden("Server is denied by the room's server ACL")
        try:
            await verify_signatures(event, self.inbound.keyring)
        except PduError as e:
            raise forbidden(str(e)) from None
        signed_pdu = sign_event(event.pdu, self.server_name, self.hs.signing_key, rv)
        signed = Event(signed_pdu, rv)
        if known is not None and await self.inbound.is_participating(room_id):
            try:
                await self.inbound.process(origin, signed)
            except EventRejected as e:
                raise forbidden(str(e)) from None
        else:
            stored_pdu = dict(signed_pdu)
            room_state = body.get("invite_room_state")
            if isinstance(room_state, list):
                # Full PDUs (spec v1.16) must verify; stripped entries from older servers stay.
                unsigned = dict(stored_pdu.get("unsigned") or {})
                unsigned["invite_room_state"] = await self._verified_stripped_state(room_state, room_id, rv)
                stored_pdu["unsigned"] = unsigned
            await self.events.persist_remote_membership(
                Event(stored_pdu, rv), set_membership=True, created_ts=self.hs.clock.time_ms()
            )
            self.hs.notifier.notify(rooms=[room_id], users=[target])
        return {"event": signed_pdu}
