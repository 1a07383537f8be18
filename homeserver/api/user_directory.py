"""POST /user_directory/search."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    directory = services(app, hs).user_directory
    auth = hs.auth

    async def search(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request)
        return json_response(
            await directory.search(requester.user_id, body.get("search_term"), body.get("limit"))
        )

    app.router.add_routes([web.post(V3 + "/user_directory/search", search)])
