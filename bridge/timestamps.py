"""Jump to a date for other servers: GET /_matrix/federation/v1/timestamp_to_event/{roomId}
(a server that joined a room late asks one that holds its early history)."""

from __future__ import annotations

from bridge.handler import FederationHandler
from homeserver.errors import not_found
from homeserver.server import HomeServer
from homeserver.storage.room_lookups import event_near_timestamp


class FederatedTimestamps:
    def __init__(self, hs: HomeServer, handler: FederationHandler) -> None:
        self.hs = hs
        self.handler = handler

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
