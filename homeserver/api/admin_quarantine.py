"""Quarantine and protection of media, in Synapse's admin API shape:

    POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}     {}
    POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}   {}
    POST /_synapse/admin/v1/room/{roomId}/media/quarantine              {"num_quarantined": n}
    POST /_synapse/admin/v1/quarantine_media/{roomId}                   (the same, legacy path)
    POST /_synapse/admin/v1/user/{userId}/media/quarantine              {"num_quarantined": n}
    POST /_synapse/admin/v1/media/protect/{mediaId}                     {}
    POST /_synapse/admin/v1/media/unprotect/{mediaId}                   {}
    GET  /_synapse/admin/v1/room/{roomId}/media                         {"local": [mxc], "remote": [mxc]}

Quarantined media answers 404 to downloads and thumbnails. Quarantining a local item also
quarantines every local item with the same bytes (SHA-256), and a later upload of those
bytes is quarantined as it is stored; releasing one releases its copies. Protected media
(`safe_from_quarantine`, local only) is skipped by every quarantine, including by its own ID
(200, and the item stays available, as in Synapse); protection covers the item, not its
unprotected copies, which that same request quarantines. Media of other servers is quarantined in
the cache (homeserver.handlers.remote_media_cache), also before it was ever fetched.

A room's media is what its stored events name in `url` and `info.thumbnail_url`: encrypted
events hide theirs, and a redacted event no longer holds its content, so quarantine a
room's media before redacting it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from homeserver.api.admin import V1, require_admin
from homeserver.api.http import json_response
from homeserver.errors import invalid_param, not_found
from homeserver.handlers.cs_services import services
from homeserver.handlers.media import MEDIA_ID_RE, SERVER_NAME_RE
from homeserver.server import HomeServer

Handler = Callable[[web.Request], Awaitable[web.Response]]


def split_mxc(uri: str) -> tuple[str, str] | None:
    """(server name, media ID) of a well-formed `mxc://` URI; events may carry any string."""
    server_name, _, media_id = uri.removeprefix("mxc://").partition("/")
    if SERVER_NAME_RE.match(server_name) and MEDIA_ID_RE.match(media_id):
        return server_name, media_id
    return None


def setup(app: web.Application, hs: HomeServer) -> None:
    repo = services(app, hs).media
    store = repo.store

    async def quarantine_remote(server_name: str, media_id: str, flag: bool) -> bool:
        """(Un)quarantine an item of another server in the cache; whether that changed it."""
        meta = await asyncio.to_thread(repo.remote_cache.read_meta, server_name, media_id)
        if bool(meta and meta.get("quarantined")) == flag:
            return False
        await asyncio.to_thread(repo.remote_cache.set_quarantined, server_name, media_id, flag)
        return True

    def by_id(flag: bool) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            await require_admin(hs, request)
            server_name, media_id = request.match_info["server_name"], request.match_info["media_id"]
            repo.check_ids(server_name, media_id)
            if server_name != hs.server_name:
                await quarantine_remote(server_name, media_id, flag)
            elif not await store.set_quarantined(flag, media_ids=[media_id]):
                if await store.get(media_id) is None:  # else protected, or already so
                    raise not_found("Unknown media")
            return json_response({})

        return handler

    async def room_media_ids(request: web.Request) -> tuple[list[str], list[tuple[str, str]]]:
        """The room's local media IDs and its (server name, media ID) of other servers."""
        room_id = request.match_info["room_id"]
        if await hs.events.get_room_version(room_id) is None:
            raise not_found("Room not found")
        local: list[str] = []
        remote: list[tuple[str, str]] = []
        for uri in await store.mxcs_in_room(room_id):
            parts = split_mxc(uri)
            if parts is None:
                continue
            if parts[0] == hs.server_name:
                local.append(parts[1])
            else:
                remote.append(parts)
        return local, remote

    async def room_media(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        local, remote = await room_media_ids(request)
        return json_response(
            {
                "local": [f"mxc://{hs.server_name}/{m}" for m in local],
                "remote": [f"mxc://{s}/{m}" for s, m in remote],
            }
        )

    async def quarantine_room(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        local, remote = await room_media_ids(request)
        count = await store.set_quarantined(True, media_ids=local)
        for server_name, media_id in remote:
            count += await quarantine_remote(server_name, media_id, True)
        return json_response({"num_quarantined": count})

    async def quarantine_user(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        user_id = request.match_info["user_id"]
        if not user_id.endswith(":" + hs.server_name):
            raise invalid_param("Only the media of local users can be quarantined this way")
        if await hs.accounts.get_user(user_id) is None:
            raise not_found("Unknown user")
        return json_response({"num_quarantined": await store.set_quarantined(True, user_id=user_id)})

    def protect(flag: bool) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            await require_admin(hs, request)
            media_id = request.match_info["media_id"]
            repo.check_ids(hs.server_name, media_id)
            if not await store.set_protected(media_id, flag):
                raise not_found("Unknown media")
            return json_response({})

        return handler

    app.router.add_routes(
        [
            web.post(V1 + "/media/quarantine/{server_name}/{media_id}", by_id(True)),
            web.post(V1 + "/media/unquarantine/{server_name}/{media_id}", by_id(False)),
            web.get(V1 + "/room/{room_id}/media", room_media),
            web.post(V1 + "/room/{room_id}/media/quarantine", quarantine_room),
            web.post(V1 + "/quarantine_media/{room_id}", quarantine_room),
            web.post(V1 + "/user/{user_id}/media/quarantine", quarantine_user),
            web.post(V1 + "/media/protect/{media_id}", protect(True)),
            web.post(V1 + "/media/unprotect/{media_id}", protect(False)),
        ]
    )
