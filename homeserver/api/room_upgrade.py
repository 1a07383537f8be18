"""POST /rooms/{roomId}/upgrade."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.handlers.auth import refuse_if_suspended
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    upgrades = services(app, hs).upgrades
    auth = hs.auth

    async def upgrade(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        refuse_if_suspended(requester)
        body = await read_json(request)
        new_room = await upgrades.upgrade(
            requester.user_id, request.match_info["room_id"], body.get("new_version")
        )
        return json_response({"replacement_room": new_room})

    app.router.add_routes([web.post(V3 + "/rooms/{room_id}/upgrade", upgrade)])
