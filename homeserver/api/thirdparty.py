"""/thirdparty/*: third-party networks bridged by application services.

Sotto has no application services, so it knows no protocol: the list is empty, a named
protocol is unknown (404), and lookups across all protocols find nothing. Clients (Element's
room directory) ask on startup and take these answers as "no bridges".
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response
from homeserver.errors import not_found
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    async def protocols(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request)
        return json_response({})

    async def unknown_protocol(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request)
        raise not_found("Unknown protocol")

    async def nothing_found(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request)
        return json_response([])

    app.router.add_routes(
        [
            web.get(V3 + "/thirdparty/protocols", protocols),
            web.get(V3 + "/thirdparty/protocol/{protocol}", unknown_protocol),
            web.get(V3 + "/thirdparty/location/{protocol}", unknown_protocol),
            web.get(V3 + "/thirdparty/user/{protocol}", unknown_protocol),
            web.get(V3 + "/thirdparty/location", nothing_found),
            web.get(V3 + "/thirdparty/user", nothing_found),
        ]
    )
