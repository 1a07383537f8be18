"""Room repair tools of the admin API (server admins only), in Synapse's shape:

POST   /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin   {"user_id": ...} (default:
    the caller) -> {}: a joined local member with the room's top power gives the user the
    same level, and invites them unless they are in the room (or invited) or it is public
DELETE /_synapse/admin/v1/rooms/{roomIdOrAlias}/forward_extremities -> {"deleted": n}: all
    but the newest forward extremity stop being ones (new events cite that one alone)
GET    /_synapse/admin/v1/rooms/{roomIdOrAlias}/forward_extremities
    -> {"count": n, "results": [{"event_id", "state_group", "depth", "received_ts"}]}
GET    /_synapse/admin/v1/fetch_event/{eventId}   -> {"event": the stored event}

Logic in homeserver/handlers/admin_rooms.py.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.admin import ADMIN_KEY, V1, require_admin
from homeserver.api.http import json_response, read_json
from homeserver.errors import optional_str
from homeserver.handlers.admin_rooms import AdminRoomTools
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    admin = app[ADMIN_KEY]
    tools = AdminRoomTools(admin, admin.store, hs.rooms, hs.events, hs.creator, hs.clock)

    async def make_room_admin(request: web.Request) -> web.Response:
        requester = await require_admin(hs, request)
        user_id = optional_str(await read_json(request, allow_empty=True), "user_id") or requester.user_id
        room_id = await tools.room_id(request.match_info["room"])
        await tools.make_room_admin(room_id, user_id)
        return json_response({})

    async def forward_extremities(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        room_id = await tools.room_id(request.match_info["room"])
        if request.method == "DELETE":
            return json_response({"deleted": await tools.delete_forward_extremities(room_id)})
        return json_response(await tools.forward_extremities(room_id))

    async def fetch_event(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response({"event": await tools.fetch_event(request.match_info["event_id"])})

    extremities = V1 + "/rooms/{room}/forward_extremities"
    app.router.add_routes(
        [
            web.post(V1 + "/rooms/{room}/make_room_admin", make_room_admin),
            web.get(extremities, forward_extremities),
            web.delete(extremities, forward_extremities),
            web.get(V1 + "/fetch_event/{event_id}", fetch_event),
        ]
    )
