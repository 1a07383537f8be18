"""The space hierarchy over federation: GET /_matrix/federation/v1/hierarchy/{roomId} for
other servers, and the same request made to them for child rooms this server does not know
(`RoomHandler.remote_hierarchy`, used by `SpacesHandler.hierarchy`)."""

from __future__ import annotations

import logging
from typing import Any

from bridge.acl import room_allows
from bridge.client import FederationClient, FederationError, fed_path
from homeserver.errors import forbidden
from homeserver.handlers.spaces import SpacesHandler
from homeserver.server import HomeServer

log = logging.getLogger(__name__)

# Servers tried per unknown child room (its m.space.child event's `via`), in order.
MAX_VIA = 3


class FederatedHierarchy:
    def __init__(self, hs: HomeServer, client: FederationClient) -> None:
        self.hs = hs
        self.client = client
        self.spaces = SpacesHandler(hs.events, hs.rooms)

    async def on_hierarchy(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        if await self.hs.events.get_room_version(room_id) is not None and not await room_allows(
            self.hs.events, room_id, origin
        ):
            raise forbidden("Server is denied by the room's server ACL")
        return await self.spaces.federation_hierarchy(origin, room_id, suggested_only)

    async def remote_hierarchy(
        self, room_id: str, via: list[str], suggested_only: bool
    ) -> dict[str, Any] | None:
        """The first answer among `via` for a room this server does not know, or None."""
        servers = [s for s in dict.fromkeys(via) if s != self.hs.server_name][:MAX_VIA]
        for server in servers:
            try:
                answer = await self.client.get(
                    server,
                    fed_path("/_matrix/federation/v1/hierarchy/{}", room_id),
                    query=[("suggested_only", "true" if suggested_only else "false")],
                )
            except FederationError as e:
                log.info("hierarchy of %s from %s failed: %s", room_id, server, e)
                continue
            if isinstance(answer, dict) and isinstance(answer.get("room"), dict):
                return answer
        return None
