"""GET /sync."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, query_bool, query_int
from homeserver.server import HomeServer
from homeserver.sync.filter_cache import FilterCache
from homeserver.sync.handler import SyncRequest
from homeserver.sync.tokens import SyncToken


def setup(app: web.Application, hs: HomeServer) -> None:
    max_timeout = hs.config.limits.max_sync_timeout_ms
    filters = FilterCache(hs.filters)

    async def sync(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        query = request.query
        filter_json, sync_filter = await filters.resolve(requester.user_id, query.get("filter"))
        since = query.get("since")
        req = SyncRequest(
            requester=requester,
            since=SyncToken.parse(since) if since else None,
            filter=sync_filter,
            filter_json=filter_json,
            set_presence=query.get("set_presence"),
            full_state=query_bool(request, "full_state"),
            timeout_ms=query_int(request, "timeout", 0, maximum=max_timeout),
        )
        return json_response(await hs.sync.sync(req))

    app.router.add_routes([web.get(V3 + "/sync", sync)])
