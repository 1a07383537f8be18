"""Relations (/v1/rooms/{roomId}/relations/...) and threads (/v1/rooms/{roomId}/threads)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V1, json_response, query_bool, query_int
from homeserver.handlers.cs_services import services
from homeserver.handlers.relations import DEFAULT_LIMIT
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    relations = services(app, hs).relations
    auth = hs.auth

    async def get_relations(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        m = request.match_info
        body = await relations.relations(
            requester.user_id,
            requester.device_id,
            m["room_id"],
            m["event_id"],
            m.get("rel_type"),
            m.get("event_type"),
            request.query.get("from"),
            request.query.get("to"),
            query_int(request, "limit", DEFAULT_LIMIT, minimum=0),
            request.query.get("dir", "b"),
            query_bool(request, "recurse"),
        )
        return json_response(body)

    async def get_threads(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await relations.threads(
            requester.user_id,
            request.match_info["room_id"],
            request.query.get("include", "all"),
            request.query.get("from"),
            query_int(request, "limit", DEFAULT_LIMIT, minimum=0),
        )
        return json_response(body)

    base = V1 + "/rooms/{room_id}"
    app.router.add_routes(
        [
            web.get(base + "/relations/{event_id}", get_relations),
            web.get(base + "/relations/{event_id}/{rel_type}", get_relations),
            web.get(base + "/relations/{event_id}/{rel_type}/{event_type}", get_relations),
            web.get(base + "/threads", get_threads),
        ]
    )
