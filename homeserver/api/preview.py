"""URL previews: `GET /_matrix/client/v1/media/preview_url` and the legacy
`/_matrix/media/v3/preview_url` (both authenticated).

Off unless `media.url_preview_enabled`: the routes are then not registered, so clients
get 404 M_UNRECOGNIZED. The work is in `homeserver.handlers.preview`.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V1, json_response
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.cs_services import services
from homeserver.handlers.preview import AddressGuard, UrlPreviewer
from homeserver.server import HomeServer

LEGACY = "/_matrix/media/{_ver:(?:r0|v3)}"


def setup(app: web.Application, hs: HomeServer) -> None:
    media_config = hs.config.media
    if not media_config.url_preview_enabled:
        return
    previewer = UrlPreviewer(
        services(app, hs).media, AddressGuard(list(media_config.url_preview_allowed_ranges)), hs.clock
    )
    hs.background.append(previewer)
    auth = hs.auth

    async def preview_url(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        url = request.query.get("url")
        if not url:
            raise MatrixError(400, Codes.MISSING_PARAM, "url is required")
        return json_response(await previewer.preview(requester.user_id, url))

    app.router.add_routes(
        [
            web.get(V1 + "/media/preview_url", preview_url),
            web.get(LEGACY + "/preview_url", preview_url),
        ]
    )
