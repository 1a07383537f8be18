"""GET /rooms/{roomId}/timestamp_to_event (jump to a date), GET /mutual_rooms and
GET /rooms/{roomId}/initialSync and GET /events?room_id= (room previews)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V1, V3, json_response, query_int
from homeserver.errors import Codes, MatrixError, missing_param, not_found
from homeserver.events.identifiers import is_valid_user_id
from homeserver.handlers.room_previews import DEFAULT_LIMIT, room_events_since, room_initial_sync
from homeserver.server import HomeServer
from homeserver.storage.room_lookups import event_near_timestamp, mutual_rooms, timeline_position


def setup(app: web.Application, hs: HomeServer) -> None:
    async def timestamp_to_event(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        room_id = request.match_info["room_id"]
        # Only within the history the user may read (their window of the room); checked
        # first, so that someone who cannot read the room learns nothing from the errors.
        window = await hs.messages.visible_window(room_id, requester.user_id)
        raw_ts, direction = request.query.get("ts"), request.query.get("dir")
        if raw_ts is None:
            raise missing_param("ts")
        if direction is None:
            raise missing_param("dir")
        try:
            ts = int(raw_ts)
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, "ts must be an integer") from None
        if direction not in ("f", "b"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be f or b")
        forwards = direction == "f"
        found = await event_near_timestamp(hs.db, room_id, ts, forwards, window.lower, window.upper)
        if window.lower is None and await _history_falls_short(room_id, ts, forwards, found, window.upper):
            found = await _ask_other_servers(room_id, ts, forwards, found) or found
        if found is None:
            raise not_found("No event found")
        event_id, origin_server_ts = found
        return json_response({"event_id": event_id, "origin_server_ts": origin_server_ts})

    async def _history_falls_short(
        room_id: str, ts: int, forwards: bool, found: tuple[str, int] | None, upper: int
    ) -> bool:
        """Whether other servers may hold a better answer: nothing was found here, or (going
        forwards) this server's history of the room does not reach back to `ts`. Only for
        users who may read the room's whole history (fetched history lands before their
        join)."""
        if hs.messages.remote_timestamp is None:
            return False
        if found is None:
            return True
        return forwards and await event_near_timestamp(hs.db, room_id, ts, False, None, upper) is None

    async def _ask_other_servers(
        room_id: str, ts: int, forwards: bool, found: tuple[str, int] | None
    ) -> tuple[str, int] | None:
        """The event other servers name, if it is now stored here and nearer `ts`."""
        assert hs.messages.remote_timestamp is not None
        event_id = await hs.messages.remote_timestamp(room_id, ts, forwards)
        if event_id is None:
            return None
        position = await timeline_position(hs.db, room_id, event_id)
        if position is None:
            return None
        origin_ts = position[1]
        if (origin_ts < ts) if forwards else (origin_ts > ts):
            return None
        if found is not None and ((origin_ts >= found[1]) if forwards else (origin_ts <= found[1])):
            return None
        return event_id, origin_ts

    async def shared_rooms(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        other = request.query.get("user_id")
        if other is None:
            raise missing_param("user_id")
        if not is_valid_user_id(other):
            raise MatrixError(400, Codes.INVALID_PARAM, "user_id is not a valid user ID")
        if other == requester.user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "user_id is your own user ID")
        if "from" in request.query:
            # Every answer is one whole batch, so no token was ever handed out.
            raise MatrixError(400, Codes.INVALID_PARAM, "Unknown pagination token")
        return json_response({"joined": await mutual_rooms(hs.db, requester.user_id, other)})

    async def initial_sync(request: web.Request) -> web.Response:
        # Guests too: previewing a world-readable room is what guest access is for.
        requester = await hs.auth.get_requester(request, allow_guest=True)
        limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=1)
        room_id = request.match_info["room_id"]
        return json_response(
            await room_initial_sync(hs, requester.user_id, requester.device_id, room_id, limit)
        )

    async def peek_events(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        timeout = query_int(request, "timeout", 0, maximum=hs.config.limits.max_sync_timeout_ms)
        room_id = request.query.get("room_id")
        since = request.query.get("from")
        return json_response(await room_events_since(hs, requester.user_id, room_id, since, timeout))

    app.router.add_routes(
        [
            web.get(V3 + "/events", peek_events),
            web.get(V3 + "/rooms/{room_id}/initialSync", initial_sync),
            web.get(V1 + "/rooms/{room_id}/timestamp_to_event", timestamp_to_event),
            web.get(V1 + "/mutual_rooms", shared_rooms),
        ]
    )
