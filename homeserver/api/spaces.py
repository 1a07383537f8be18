"""Spaces: GET /v1/rooms/{roomId}/hierarchy and GET /v1/room_summary/{roomIdOrAlias}."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V1, json_response, query_bool, query_int
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    spaces = services(app, hs).spaces
    auth = hs.auth

    async def hierarchy(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        max_depth = query_int(request, "max_depth", -1, minimum=0) if "max_depth" in request.query else None
        body = await spaces.hierarchy(
            requester.user_id,
            request.match_info["room_id"],
            suggested_only=query_bool(request, "suggested_only"),
            max_depth=max_depth,
            limit=query_int(request, "limit", 50, minimum=1),
            from_token=request.query.get("from"),
        )
        return json_response(body)

    async def room_summary(request: web.Request) -> web.Response:
        # Authentication is optional here: anonymous callers see public rooms only.
        user_id = None
        if "Authorization" in request.headers:
            user_id = (await auth.get_requester(request, allow_guest=True)).user_id
        return json_response(await spaces.room_summary(user_id, request.match_info["room"]))

    app.router.add_routes(
        [
            web.get(V1 + "/rooms/{room_id}/hierarchy", hierarchy),
            web.get(V1 + "/room_summary/{room}", room_summary),
        ]
    )
