"""Presence: GET/PUT /presence/{userId}/status."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    presence = services(app, hs).presence
    auth = hs.auth

    async def get_status(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        return json_response(await presence.get_presence(requester.user_id, request.match_info["user_id"]))

    async def put_status(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request)
        await presence.set_presence(
            requester.user_id, request.match_info["user_id"], body.get("presence"), body.get("status_msg")
        )
        return json_response({})

    path = V3 + "/presence/{user_id}/status"
    app.router.add_routes([web.get(path, get_status), web.put(path, put_status)])
