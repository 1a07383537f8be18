"""Content repository: upload (sync and async), authenticated and legacy download, thumbnails, config.

Upload bodies bypass the app's 1 MiB `client_max_size`: they are streamed from
`request.content` straight to disk, with the media size limit enforced here.
URL previews live in homeserver.api.preview (off unless media.url_preview_enabled).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import web

from homeserver.api.http import V1, json_response, query_int
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.cs_services import services
from homeserver.handlers.media import MediaFile
from homeserver.handlers.retention import RemoteMediaExpiry, parse_duration
from homeserver.server import HomeServer

LEGACY = "/_matrix/media/{_ver:(?:r0|v3)}"

# Served inline only for these types (the spec's list); everything else is an attachment.
INLINE_CONTENT_TYPES = frozenset(
    {
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/flac",
        "audio/x-flac",
    }
)

CSP = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
    "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
)


def content_disposition(content_type: str, filename: str | None) -> str:
    base = content_type.split(";")[0].strip().lower()
    kind = "inline" if base in INLINE_CONTENT_TYPES else "attachment"
    if not filename:
        return kind
    if filename.isascii() and all(c.isalnum() or c in " ._-+()[]" for c in filename):
        return f'{kind}; filename="{filename}"'
    return f"{kind}; filename*=utf-8''{quote(filename, safe='')}"


def file_response(media: MediaFile, filename: str | None, *, authenticated: bool) -> web.FileResponse:
    headers = {
        "Content-Type": media.content_type,
        "Content-Disposition": content_disposition(media.content_type, filename or media.upload_name),
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Cache-Control": "private, max-age=86400" if authenticated else "public, max-age=86400",
    }
    return web.FileResponse(media.path, headers=headers)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(64 * 1024):
        yield chunk


REMOTE_MEDIA_EXPIRY_KEY = web.AppKey("sotto.remote_media_expiry", RemoteMediaExpiry)


def setup(app: web.Application, hs: HomeServer) -> None:
    repo = services(app, hs).media
    auth = hs.auth
    lifetime = parse_duration(hs.config.media.remote_media_lifetime, "remote_media_lifetime")
    if lifetime is not None:
        app[REMOTE_MEDIA_EXPIRY_KEY] = RemoteMediaExpiry(hs, repo.purge_remote_cache, lifetime)
        hs.background.append(app[REMOTE_MEDIA_EXPIRY_KEY])

    def timeout_ms(request: web.Request) -> int | None:
        if "timeout_ms" not in request.query:
            return None
        return query_int(request, "timeout_ms", 20_000, maximum=60_000)

    async def upload(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        mxc = await repo.upload(
            requester.user_id,
            _body(request),
            request.headers.get("Content-Type"),
            request.query.get("filename"),
            request.content_length,
        )
        return json_response({"content_uri": mxc})

    async def upload_reserved(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        server_name = request.match_info["server_name"]
        media_id = request.match_info["media_id"]
        repo.check_ids(server_name, media_id)
        if server_name != hs.server_name:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown media ID")
        await repo.upload(
            requester.user_id,
            _body(request),
            request.headers.get("Content-Type"),
            request.query.get("filename"),
            request.content_length,
            reserved_id=media_id,
        )
        return json_response({})

    async def create(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        mxc, expires = await repo.create(requester.user_id)
        return json_response({"content_uri": mxc, "unused_expires_at": expires})

    async def config(request: web.Request) -> web.Response:
        await auth.get_requester(request)
        return json_response({"m.upload.size": hs.config.limits.max_upload_bytes})

    async def download_authed(request: web.Request) -> web.StreamResponse:
        await auth.get_requester(request, allow_guest=True)
        media = await repo.get_file(
            request.match_info["server_name"], request.match_info["media_id"], timeout_ms(request)
        )
        return file_response(media, request.match_info.get("file_name"), authenticated=True)

    async def download_legacy(request: web.Request) -> web.StreamResponse:
        media = await repo.get_file(
            request.match_info["server_name"], request.match_info["media_id"], timeout_ms(request)
        )
        return file_response(media, request.match_info.get("file_name"), authenticated=False)

    async def _thumbnail(request: web.Request, authenticated: bool) -> web.StreamResponse:
        if "width" not in request.query or "height" not in request.query:
            raise MatrixError(400, Codes.MISSING_PARAM, "width and height are required")
        width = query_int(request, "width", 0, minimum=1, maximum=10_000)
        height = query_int(request, "height", 0, minimum=1, maximum=10_000)
        media = await repo.get_thumbnail(
            request.match_info["server_name"],
            request.match_info["media_id"],
            width,
            height,
            request.query.get("method", "scale"),
            timeout_ms(request),
        )
        return file_response(media, None, authenticated=authenticated)

    async def thumbnail_authed(request: web.Request) -> web.StreamResponse:
        await auth.get_requester(request, allow_guest=True)
        return await _thumbnail(request, True)

    async def thumbnail_legacy(request: web.Request) -> web.StreamResponse:
        return await _thumbnail(request, False)

    authed = V1 + "/media"
    ids = "/{server_name}/{media_id}"
    app.router.add_routes(
        [
            web.post("/_matrix/media/{_ver:(?:r0|v3|v1)}/upload", upload),
            web.put("/_matrix/media/{_ver:(?:r0|v3)}/upload" + ids, upload_reserved),
            web.post("/_matrix/media/v1/create", create),
            web.get(authed + "/config", config),
            web.get(LEGACY + "/config", config),
            web.get(authed + "/download" + ids, download_authed),
            web.get(authed + "/download" + ids + "/{file_name}", download_authed),
            web.get(LEGACY + "/download" + ids, download_legacy),
            web.get(LEGACY + "/download" + ids + "/{file_name}", download_legacy),
            web.get(authed + "/thumbnail" + ids, thumbnail_authed),
            web.get(LEGACY + "/thumbnail" + ids, thumbnail_legacy),
        ]
    )
