"""POST /user_directory/search.

Clients search as the user types and every search scans the directory, so searches are
limited per user (rate_limits.user_directory_search_*; admins, application services with
`rate_limited: false` and users an admin lifted the limits of are exempt)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.guard import RATE_LIMIT_OVERRIDES_KEY
from homeserver.api.http import V3, json_response, read_json
from homeserver.handlers.auth import Requester
from homeserver.handlers.cs_services import services
from homeserver.ratelimit import RateLimiter
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    directory = services(app, hs).user_directory
    auth = hs.auth
    limits = hs.config.rate_limits
    limiter = RateLimiter(
        hs.clock,
        limits.user_directory_search_per_second,
        limits.user_directory_search_burst,
        enabled=limits.enabled,
    )

    async def exempt(request: web.Request, requester: Requester) -> bool:
        if requester.is_admin:
            return True
        if requester.appservice is not None:
            service = hs.appservices.get(requester.appservice)
            if service is not None and not service.rate_limited:
                return True
        overrides = request.app.get(RATE_LIMIT_OVERRIDES_KEY)
        return overrides is not None and await overrides.get(requester.user_id) == (0, 0)

    async def search(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        if limiter.enabled and not await exempt(request, requester):
            limiter.check(requester.user_id)
        body = await read_json(request)
        return json_response(
            await directory.search(requester.user_id, body.get("search_term"), body.get("limit"))
        )

    app.router.add_routes([web.post(V3 + "/user_directory/search", search)])
