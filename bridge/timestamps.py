"""Jump to a date across servers: GET /_matrix/federation/v1/timestamp_to_event/{roomId}.

A server that joined a room late holds only part of its history. It answers other servers
from what it holds (`on_timestamp_to_event`), and asks them when its own history falls
short of a client's date (`ask`, the client endpoint's `remote_timestamp` hook): the event
a server names is fetched, checked like any PDU and stored as backfilled history."""

from __future__ import annotations

import logging

from bridge.client import FederationClient, FederationError, fed_path
from bridge.edus import room_servers
from bridge.events_in import EventRejected, FederationEventHandler
from bridge.handler import FederationHandler
from bridge.pdu import PduError
from homeserver.errors import not_found
from homeserver.server import HomeServer
from homeserver.storage.room_lookups import event_near_timestamp, timeline_position

log = logging.getLogger(__name__)

# Servers asked, at most, for one client request (each may take a network round trip).
MAX_ASKED = 3


class FederatedTimestamps:
    def __init__(
        self,
        hs: HomeServer,
        handler: FederationHandler,
        client: FederationClient,
        inbound: FederationEventHandler,
    ) -> None:
        self.hs = hs
        self.handler = handler
        self.client = client
        self.inbound = inbound

    async def ask(self, room_id: str, ts: int, forwards: bool) -> str | None:
        """The event other servers in the room find nearest `ts`, stored here (as history
        fetched by backfill if it was missing); None if none of them has one."""
        rv = await self.hs.events.get_room_version(room_id)
        if rv is None:
            return None
        servers = sorted(await room_servers(self.hs, room_id) - {self.hs.server_name, ""})
        for server in servers[:MAX_ASKED]:
            try:
                body = await self.client.get(
                    server,
                    fed_path("/_matrix/federation/v1/timestamp_to_event/{}", room_id),
                    query={"ts": str(ts), "dir": "f" if forwards else "b"},
                )
            except FederationError as e:
                log.info("timestamp_to_event for %s at %s failed: %s", room_id, server, e)
                continue
            event_id = body.get("event_id") if isinstance(body, dict) else None
            if not isinstance(event_id, str):
                continue
            if await timeline_position(self.hs.db, room_id, event_id) is not None:
                return event_id
            fetched = (await self.inbound.fetch_events(server, room_id, rv, [event_id])).get(event_id)
            if fetched is None:
                continue
            try:
                await self.inbound.process(server, fetched, backfilled=True)
            except (PduError, EventRejected) as e:
                log.info("event %s named by %s not accepted: %s", event_id, server, e)
                continue
            return event_id
        return None

    async def on_timestamp_to_event(
        self, origin: str, room_id: str, ts: int, forwards: bool
    ) -> dict[str, object]:
        # The server must be (or have been) in the room, or the room world-readable, and
        # not denied by the room's ACL.
        await self.handler.check_server_in_room(origin, room_id)
        db = self.hs.db
        found = await event_near_timestamp(db, room_id, ts, forwards, None, db.current_stream_id)
        if found is None:
            raise not_found("No event found")
        return {"event_id": found[0], "origin_server_ts": found[1]}
