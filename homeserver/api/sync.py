"""GET /sync."""

from __future__ import annotations

from aiohttp import web

from homeserver import jsonutil
from homeserver.api.http import V3, json_response, query_bool, query_int
from homeserver.errors import Codes, MatrixError
from homeserver.server import HomeServer
from homeserver.sync.filter import SyncFilter
from homeserver.sync.handler import SyncRequest
from homeserver.sync.tokens import SyncToken


def setup(app: web.Application, hs: HomeServer) -> None:
    max_timeout = hs.config.limits.max_sync_timeout_ms

    async def sync(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        raw_filter = request.query.get("filter")
        filter_json: object = {}
        if raw_filter:
            if raw_filter.lstrip().startswith("{"):
                try:
                    filter_json = jsonutil.loads(raw_filter)
                except ValueError:
                    raise MatrixError(400, Codes.BAD_JSON, "filter is not valid JSON") from None
            else:
                stored = await hs.filters.get(requester.user_id, raw_filter)
                if stored is None:
                    raise MatrixError(400, Codes.INVALID_PARAM, "Unknown filter")
                filter_json = stored
        since = request.query.get("since")
        req = SyncRequest(
            requester=requester,
            since=SyncToken.parse(since) if since else None,
            filter=SyncFilter.parse(filter_json),
            full_state=query_bool(request, "full_state"),
            timeout_ms=query_int(request, "timeout", 0, maximum=max_timeout),
        )
        return json_response(await hs.sync.sync(req))

    app.router.add_routes([web.get(V3 + "/sync", sync)])
