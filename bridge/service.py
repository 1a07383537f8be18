"""Federation's composition root: builds the bridge's components and wires them into the homeserver.

`setup(app, hs)` (an area of homeserver.app) does nothing unless `federation.enabled`.
Otherwise it builds a `Federation`, installs its hooks (local events and EDUs to send,
remote joins/invites/leaves) and registers it as a background service, whose `start()`
resumes the outbound queue and opens the TLS federation listener on
`federation.bind_address:port`. `start_federation_listener` is that last step on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from sqlalchemy import func, select

from bridge import admin
from bridge.client import FederationClient, FederationError, RemoteError, fed_path
from bridge.directory import FederatedDirectory
from bridge.discovery import AddressFilter
from bridge.e2ee import FederatedE2EE
from bridge.edus import EduHandler, room_servers
from bridge.events_in import EventRejected, FederationEventHandler
from bridge.handler import FederationHandler
from bridge.hierarchy import FederatedHierarchy
from bridge.keys import KeyRing, LocalKeys, load_old_keys
from bridge.media import FederatedMedia
from bridge.membership import MembershipHandler
from bridge.outbound import OutboundMessages
from bridge.pdu import PduError
from bridge.policy import SIGN_PATH, RoomPolicy
from bridge.policy_server import WELL_KNOWN, PolicyServer, load_or_create_policy_key
from bridge.queue import OutboundQueue
from bridge.schema import federation_event_state
from bridge.server import create_federation_app
from bridge.state import EventStateInfo, StateTracker
from bridge.sticky import StickyFederation
from bridge.store import FederationStore
from bridge.timestamps import FederatedTimestamps
from bridge.tls import client_context, server_context
from homeserver.api.directory import get_room_directory
from homeserver.api.keys import e2ee_services
from homeserver.api.profile import get_profile_handler
from homeserver.errors import Codes, MatrixError
from homeserver.events import Event
from homeserver.events.identifiers import domain_of
from homeserver.handlers.cs_services import services as cs_services
from homeserver.server import HomeServer
from homeserver.storage.postgres import Leader
from homeserver.storage.schema import events

log = logging.getLogger(__name__)

BACKFILL_ON_JOIN = 50
# At most this many stranded local events are recovered at startup (the newest ones).
RECOVERY_CAP = 1_000
# The advisory-lock election that picks the one worker draining the outbound queue.
SENDER_LEADER = "federation-sender"

ExtraRoute = tuple[str, str, Callable[[web.Request, str, Any], Awaitable[Any]]]


def _domain(identifier: str) -> str:
    try:
        return domain_of(identifier)
    except ValueError:
        return ""


class Federation:
    def __init__(self, hs: HomeServer) -> None:
        cfg = hs.config.federation
        self.hs = hs
        self.config = cfg
        self.local_keys = LocalKeys(
            hs.server_name,
            hs.signing_key,
            load_old_keys(hs.config.resolve_path(hs.config.signing_key_path)),
            hs.clock,
        )
        ca = hs.config.resolve_path(cfg.custom_ca_file) if cfg.custom_ca_file else None
        self.client = FederationClient(
            hs.server_name,
            hs.signing_key,
            hs.clock,
            client_context(cfg.verify_certificates, ca),
            AddressFilter(list(cfg.ip_range_whitelist)),
        )
        self.client.tracing = hs.tracing
        self.keyring = KeyRing(
            hs.db,
            hs.clock,
            self.local_keys,
            self.client.fetch_server_keys,
            self.client.query_notary,
            list(cfg.trusted_key_servers),
        )
        self.store = FederationStore(hs.db)
        self.tracker = StateTracker(hs.events)
        self.inbound = FederationEventHandler(hs, self.tracker, self.keyring, self.client)
        self.queue = OutboundQueue(
            self.store,
            self.client,
            hs.events,
            hs.clock,
            hs.server_name,
            cfg.retry_min_ms,
            cfg.retry_max_ms,
            erased=hs.accounts.erased,
        )
        self.handler = FederationHandler(hs, self.store, self.tracker, self.inbound)
        self.membership = MembershipHandler(hs, self.client, self.tracker, self.inbound)
        self.hierarchy = FederatedHierarchy(hs, self.client)
        self.timestamps = FederatedTimestamps(hs, self.handler, self.client, self.inbound)
        self.edus = EduHandler(hs, self.queue)
        self.policy = RoomPolicy(hs, self.client, self.room_servers)
        self.sticky = StickyFederation(hs, self.inbound, self.store, self.queue, self.client)
        # Other areas (E2EE) add authenticated routes: (method, path, handler(request, origin, body)).
        self.extra_routes: list[ExtraRoute] = []
        # Extra middlewares for the federation listener (per-origin rate limits: homeserver.api.guard).
        self.middlewares: list[Middleware] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._room_servers: dict[str, set[str]] = {}
        self.leader: Leader | None = None

    # Wiring -------------------------------------------------------------------------------------

    def install(self) -> None:
        hs = self.hs
        # Group-committed messages queue themselves in their batch's transaction
        # (bridge.outbound); every other local event through the listener.
        outbound = OutboundMessages(hs, self.tracker, self.store, self.queue, self.room_servers)
        hs.creator.add_batch_hook(outbound.prepare_messages, replaces=self.on_local_event, remote=False)
        hs.rooms.remote_join = self.membership.remote_join
        hs.rooms.remote_invite = self.membership.remote_invite
        hs.rooms.remote_knock = self.membership.remote_knock
        hs.rooms.remote_profile = self.remote_profile
        hs.rooms.remote_hierarchy = self.hierarchy.remote_hierarchy
        hs.messages.backfill = self.backfill_on_demand
        hs.messages.remote_timestamp = self.timestamps.ask
        hs.typing.listeners.append(self.edus.on_local_edu)
        hs.receipts.listeners.append(self.edus.on_local_edu)
        self.handler.edu_handlers["m.typing"] = self.edus.on_typing
        self.handler.edu_handlers["m.receipt"] = self.edus.on_receipt
        self.membership.after_join.append(self.backfill)
        self.membership.relay = self.relay_membership
        self.inbound.accepted_listeners.append(self.on_remote_event)
        hs.creator.policy = self.policy.sign_local
        self.inbound.policy = self.policy
        self.sticky.install()
        self._wrap_room_handler()

    def _wrap_room_handler(self) -> None:
        """Route joins by remote alias, and joins/leaves of rooms this server only holds an
        invite for, over federation. RoomHandler only calls `remote_join` for rooms it has
        never heard of, so the two methods are wrapped (see the report: a hook would be cleaner)."""
        rooms = self.hs.rooms
        original_join = rooms.join
        original_set_membership = rooms.set_membership

        async def join(
            user_id: str,
            room_id_or_alias: str,
            servers: list[str] | None = None,
            extra: dict[str, Any] | None = None,
        ) -> str:
            room_id = room_id_or_alias
            candidates = list(servers or [])
            if room_id_or_alias.startswith("#") and _domain(room_id_or_alias) != self.hs.server_name:
                room_id, alias_servers = await self.query_directory(room_id_or_alias)
                candidates.extend(alias_servers)
            await rooms.refuse_if_blocked(room_id)
            if (
                room_id.startswith("!")
                and await self.hs.events.get_room_version(room_id) is not None
                and await self._needs_remote_join(room_id, candidates)
            ):
                membership = await self.hs.events.get_membership(room_id, user_id)
                if membership is not None and membership[0] == "invite":
                    invite = (await self.hs.events.get_pdus([membership[1]])).get(membership[1])
                    if invite is not None:
                        candidates.append(_domain(invite.sender))
                if ":" in room_id:
                    candidates.append(room_id.split(":", 1)[1])
                return await self.membership.remote_join(user_id, room_id, candidates, extra or {})
            return await original_join(user_id, room_id, candidates, extra)

        async def set_membership(
            sender: str, room_id: str, target: str, membership: str, reason: str | None = None
        ) -> None:
            if (
                membership == "leave"
                and sender == target
                and await self.hs.events.get_room_version(room_id) is not None
                and not await self.inbound.is_participating(room_id)
            ):
                await self.membership.remote_leave(sender, room_id, [])
                return
            await original_set_membership(sender, room_id, target, membership, reason)

        rooms.join = join  # type: ignore[method-assign]
        rooms.set_membership = set_membership  # type: ignore[method-assign]

    async def _needs_remote_join(self, room_id: str, candidates: list[str]) -> bool:
        """A room this server only holds an invite for, or one all local users have left
        (our copy of its state may be stale): join through a server still in it."""
        if not await self.inbound.is_participating(room_id):
            return True
        servers = await room_servers(self.hs, room_id)
        if self.hs.server_name in servers:
            return False
        remote = servers - {self.hs.server_name}
        candidates.extend(sorted(remote))
        return bool(remote)

    async def query_directory(self, alias: str) -> tuple[str, list[str]]:
        try:
            body = await self.client.get(
                _domain(alias), "/_matrix/federation/v1/query/directory", query={"room_alias": alias}
            )
        except RemoteError as e:
            if e.status == 404:
                raise MatrixError(404, Codes.NOT_FOUND, "Room alias not found") from None
            raise MatrixError(502, Codes.UNKNOWN, "Could not resolve the room alias") from None
        except FederationError:
            raise MatrixError(502, Codes.UNKNOWN, "Could not reach the alias's server") from None
        room_id = body.get("room_id") if isinstance(body, dict) else None
        servers = body.get("servers") if isinstance(body, dict) else None
        if not isinstance(room_id, str):
            raise MatrixError(404, Codes.NOT_FOUND, "Room alias not found")
        return room_id, [s for s in servers or [] if isinstance(s, str)]

    async def remote_profile(self, user_id: str, field: str | None) -> dict[str, Any]:
        query = {"user_id": user_id}
        if field is not None:
            query["field"] = field
        try:
            body = await self.client.get(
                _domain(user_id), "/_matrix/federation/v1/query/profile", query=query
            )
        except RemoteError as e:
            if e.status == 404:
                raise MatrixError(404, Codes.NOT_FOUND, "Profile not found") from None
            raise MatrixError(502, Codes.UNKNOWN, "The user's server refused the profile lookup") from None
        except FederationError:
            raise MatrixError(502, Codes.UNKNOWN, "Could not reach the user's server") from None
        if not isinstance(body, dict):
            raise MatrixError(502, Codes.UNKNOWN, "Malformed profile from the user's server")
        return {k: v for k, v in body.items() if isinstance(k, str) and isinstance(v, str)}

    async def on_remote_event(self, event: Event, stream_id: int, derived_written: bool) -> None:
        """Remote events accepted into a timeline reach the same listeners as local ones (push,
        search, user directory ...), except federation's own sender, and those whose work
        was written with the event."""
        if event.type == "m.room.member":
            self._room_servers.pop(event.room_id, None)
        for listener in list(self.hs.creator.listeners_for(derived_written, remote=True)):
            if listener in (self.on_local_event, self.sticky.on_local_event):
                continue  # federation's own listeners, for local events only
            try:
                await listener(event, stream_id)
            except Exception:
                log.exception("event listener failed for remote event %s", event.event_id)

    async def relay_membership(self, event: Event, origin: str) -> None:
        """A membership event another server submitted here (send_join, send_leave,
        send_knock): the other servers in the room get it from us (the spec asks it of the
        resident server; they would otherwise learn of it only from later events)."""
        try:
            destinations = await self.room_servers(event.room_id) - {self.hs.server_name, origin, ""}
            await self.queue.send_pdu(event.event_id, destinations)
        except Exception:
            log.exception("relaying %s to the room's other servers failed", event.event_id)

    # Local events out ---------------------------------------------------------------------------

    async def on_local_event(self, event: Event, stream_id: int) -> None:
        try:
            await self._send_local_event(event)
        except Exception:
            # The event is committed; remote servers will still learn of it through the
            # prev_events of later events (get_missing_events).
            log.exception("queueing local event %s for federation failed", event.event_id)

    async def _send_local_event(self, event: Event) -> None:
        async with self.tracker.room_lock(event.room_id):
            before = await self.tracker.state_before(event)
            if before is None:
                before = await self.hs.events.get_current_state_ids(event.room_id)
                if event.is_state():
                    before.pop(event.state_key_tuple, None)
            after = dict(before)
            if event.is_state():
                after[event.state_key_tuple] = event.event_id
            prepared = await self.tracker.prepare(event, after, event.prev_event_ids)
            destinations = await self.room_servers(event.room_id)
            if event.type == "m.room.member" and event.state_key:
                self._room_servers.pop(event.room_id, None)
                destinations = destinations | {_domain(event.state_key)}
            destinations = destinations - {self.hs.server_name, ""}
            # The event's state and its place in every destination's queue, in one transaction.
            async with self.hs.db.write() as conn:
                group = await self.tracker.write(conn, prepared)
                now = self.hs.clock.time_ms()
                await self.store.enqueue_in(conn, destinations, now, event_id=event.event_id)
            self.tracker.settled(event.event_id, EventStateInfo(group, None, False))
        for destination in destinations:
            self.queue.wake(destination)

    async def room_servers(self, room_id: str) -> set[str]:
        """Servers with joined members (cached per room until a membership event arrives).

        Not cached with several workers: a membership event handled by another worker
        (a remote join arriving there) would leave this worker's cache stale."""
        if not self.hs.db.exclusive:
            return await room_servers(self.hs, room_id)
        cached = self._room_servers.get(room_id)
        if cached is None:
            cached = await room_servers(self.hs, room_id)
            if len(self._room_servers) > 10_000:
                self._room_servers.clear()
            self._room_servers[room_id] = cached
        return cached

    # Backfill -----------------------------------------------------------------------------------

    async def backfill(self, room_id: str, server: str, limit: int = BACKFILL_ON_JOIN) -> int:
        """Fetch history older than what this server has, from `server`. Returns how many
        events were stored."""
        rv = await self.hs.events.get_room_version(room_id)
        if rv is None:
            return 0
        oldest = await self.hs.events.room_events(room_id, limit=1, backwards=False)
        if not oldest:
            return 0
        starts = oldest[0].event.prev_event_ids
        if not starts:
            return 0
        try:
            body = await self.client.get(
                server,
                fed_path("/_matrix/federation/v1/backfill/{}", room_id),
                query=[("v", s) for s in starts] + [("limit", str(limit))],
            )
        except FederationError as e:
            log.info("backfill of %s from %s failed: %s", room_id, server, e)
            return 0
        events = await self.inbound.parse_and_verify(
            body.get("pdus") if isinstance(body, dict) else None, room_id, rv
        )
        stored = 0
        for ev in sorted(events, key=lambda e: (-e.depth, e.event_id)):
            try:
                await self.inbound.process(server, ev, backfilled=True)
                stored += 1
            except (PduError, EventRejected) as e:
                log.info("backfilled event %s not accepted: %s", ev.event_id, e)
        return stored

    async def backfill_on_demand(self, room_id: str, limit: int = BACKFILL_ON_JOIN) -> int:
        """For /messages reaching the start of what this server holds: fetch older history
        from a server in the room. Returns how many events were stored."""
        for server in sorted(await room_servers(self.hs, room_id) - {self.hs.server_name, ""}):
            stored = await self.backfill(room_id, server, limit)
            if stored:
                return stored
        return 0

    # Lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the listener and take part in the election of the outbound sender.

        With several workers (PostgreSQL) only the leader of "federation-sender" drains the
        outbox and recovers unsent local events; the others enqueue. With one process
        (SQLite) this process is elected at once and nothing changes."""
        if self.hs.db.shared:
            self.queue.leading = False
        self.leader = self.hs.db.leader(SENDER_LEADER)
        self.leader.add_listener(self._on_leadership)
        await self.leader.start()
        await self.start_listener()

    async def _on_leadership(self, leading: bool) -> None:
        if leading:
            await self.recover_unsent_local_events()
            await self.queue.start(poll=self.hs.db.shared)
        else:
            await self.queue.step_down()

    async def recover_unsent_local_events(self, cap: int = RECOVERY_CAP) -> int:
        """Queue local events that were committed but never handed to federation.

        A local event that is not a group-committed message (state, redactions) is committed
        before it is queued, in a second transaction, so a crash between the two would leave
        it unsent; messages are queued in their own transaction (bridge.outbound). Every
        event that went through federation has a `federation_event_state` row; local events
        newer than the last such event are the ones a crash could have stranded. Returns how
        many were recovered."""
        suffix = ":" + self.hs.server_name
        local = events.c.sender.like("%" + suffix.replace("%", r"\%").replace("_", r"\_"), escape="\\")
        async with self.hs.db.read() as conn:
            last = (
                await conn.execute(
                    select(func.max(events.c.stream_id))
                    .select_from(
                        events.join(
                            federation_event_state, federation_event_state.c.event_id == events.c.event_id
                        )
                    )
                    .where(local, events.c.outlier.is_(False))
                )
            ).scalar()
            q = (
                select(events.c.event_id)
                .select_from(
                    events.outerjoin(
                        federation_event_state, federation_event_state.c.event_id == events.c.event_id
                    )
                )
                .where(
                    local,
                    events.c.outlier.is_(False),
                    events.c.stream_id > int(last or 0),
                    federation_event_state.c.event_id.is_(None),
                )
                .order_by(events.c.stream_id.desc())
                .limit(cap)
            )
            ids = [r[0] for r in await conn.execute(q)]
        if not ids:
            return 0
        stored = await self.hs.events.get_events(ids)
        recovered = 0
        for event_id in reversed(ids):
            item = stored.get(event_id)
            if item is None:
                continue
            await self.on_local_event(item.event, item.stream_id)
            recovered += 1
        log.info("queued %d local events that were committed but not yet sent", recovered)
        return recovered

    async def start_listener(self) -> None:
        cfg = self.config
        if not cfg.tls_certificate_path or not cfg.tls_private_key_path:
            log.warning("federation is enabled but no TLS certificate is configured: not listening")
            return
        ctx = server_context(
            self.hs.config.resolve_path(cfg.tls_certificate_path),
            self.hs.config.resolve_path(cfg.tls_private_key_path),
        )
        self._runner = web.AppRunner(create_federation_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.bind_address, cfg.port, ssl_context=ctx)
        await site.start()
        self.port = cfg.port
        log.info("federation listening on %s:%d (TLS)", cfg.bind_address, cfg.port)

    async def stop(self) -> None:
        if self.leader is not None:
            await self.leader.stop()
        await self.sticky.stop()
        await self.queue.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.client.close()


FEDERATION_KEY = web.AppKey("federation", Federation)


def setup(app: web.Application, hs: HomeServer) -> None:
    if not hs.config.federation.enabled:
        return
    fed = Federation(hs)
    fed.install()
    e2ee = FederatedE2EE(hs, e2ee_services(app, hs), fed.client, fed.queue)
    e2ee.install()
    fed.extra_routes.extend(e2ee.routes())
    fed.handler.edu_handlers["m.direct_to_device"] = e2ee.on_direct_to_device
    fed.handler.edu_handlers["m.device_list_update"] = e2ee.on_device_list_update
    fed.handler.edu_handlers["m.signing_key_update"] = e2ee.on_device_list_update
    get_profile_handler(app, hs).remote_lookup = fed.remote_profile
    presence = cs_services(app, hs).presence
    fed.edus.presence = presence
    presence.listeners.append(fed.edus.on_local_presence)
    fed.handler.edu_handlers["m.presence"] = fed.edus.on_presence
    media = FederatedMedia(hs, cs_services(app, hs).media, fed.client)
    media.install()
    fed.extra_routes.extend(media.routes())
    directory = FederatedDirectory(
        get_room_directory(app, hs),
        fed.client,
        serve=hs.config.room_directory.allow_public_rooms_over_federation,
    )
    directory.install()
    fed.extra_routes.extend(directory.routes())
    if hs.config.policy_server.enabled:
        cfg = hs.config.policy_server
        key = load_or_create_policy_key(hs.config.resolve_path(cfg.signing_key_path))
        fed.policy.local = PolicyServer(hs, cfg, key, fed.policy)
        fed.extra_routes.append(("POST", SIGN_PATH, fed.policy.local.on_sign))
        app.router.add_get(WELL_KNOWN, fed.policy.local.well_known)
    admin.setup(app, hs, fed)
    app[FEDERATION_KEY] = fed
    hs.background.append(fed)


async def start_federation_listener(fed: Federation) -> None:
    """Open the TLS federation listener (normally done by the background service's start())."""
    await fed.start_listener()
