"""POST /search."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    search = services(app, hs).search
    auth = hs.auth

    async def post_search(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request)
        return json_response(await search.search(requester.user_id, body, request.query.get("next_batch")))

    app.router.add_routes([web.post(V3 + "/search", post_search)])
