"""Media for server admins, in Synapse's admin API shape:

    GET    /_synapse/admin/v1/media/{serverName}/{mediaId}              {"media_info": ...}
    DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}
    POST   /_synapse/admin/v1/media/delete?before_ts=&size_gt=&keep_profiles=
    GET    /_synapse/admin/v1/users/{userId}/media?from=&limit=&dir=
    DELETE /_synapse/admin/v1/users/{userId}/media
    POST   /_synapse/admin/v1/purge_media_cache?before_ts=    media cached from other servers
    GET    /_synapse/admin/v1/statistics/users/media?order_by=&dir=&from_ts=&until_ts=&search_term=

Deleting answers {"deleted_media": [ids], "total": n}. `keep_profiles` (true by default)
spares media used as a user's or a room's avatar. Purging the cache answers {"deleted": n}:
the items fetched before `before_ts` (when each was last used is not recorded).

Media of other servers (in the cache, homeserver.handlers.remote_media_cache) can be looked
up and deleted from the cache one by one. Quarantine and protection are in
homeserver.api.admin_quarantine. Who quarantined an item is not recorded (`quarantined_by`
is null; `quarantined` says whether it is).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from homeserver.api.admin import V1, dir_backwards, require_admin
from homeserver.api.http import json_response, query_int
from homeserver.errors import Codes, MatrixError, invalid_param, not_found
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer
from homeserver.storage.media import MediaInfo

MAX_PAGE = 1000
STATISTICS_ORDERS = ("user_id", "displayname", "media_length", "media_count")


def media_json(info: MediaInfo) -> dict[str, Any]:
    return {
        "media_id": info.media_id,
        "user_id": info.user_id,
        "media_type": info.content_type,
        "media_length": info.size,
        "upload_name": info.upload_name,
        "created_ts": info.created_ts,
        "last_access_ts": None,
        "quarantined": info.quarantined,
        "quarantined_by": None,
        "safe_from_quarantine": info.safe_from_quarantine,
    }


def remote_json(server_name: str, media_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "media_id": media_id,
        "server_name": server_name,
        "media_type": meta.get("content_type"),
        "media_length": meta.get("size"),
        "upload_name": meta.get("upload_name"),
        "created_ts": meta.get("ts"),
        "last_access_ts": None,
        "quarantined": bool(meta.get("quarantined")),
        "quarantined_by": None,
        "safe_from_quarantine": False,
    }


def _deleted(ids: list[str]) -> web.Response:
    return json_response({"deleted_media": ids, "total": len(ids)})


def setup(app: web.Application, hs: HomeServer) -> None:
    repo = services(app, hs).media
    store = repo.store
    cache = repo.remote_cache

    def target(request: web.Request) -> tuple[str, str]:
        """(server name, media ID), both well formed (404 otherwise)."""
        server_name, media_id = request.match_info["server_name"], request.match_info["media_id"]
        repo.check_ids(server_name, media_id)
        return server_name, media_id

    def is_local(server_name: str) -> bool:
        return server_name == hs.server_name

    async def remote_meta(server_name: str, media_id: str) -> dict[str, Any]:
        meta = await asyncio.to_thread(cache.read_meta, server_name, media_id)
        if meta is None:
            raise not_found("Unknown media (not cached here)")
        return meta

    async def known(media_id: str) -> MediaInfo:
        info = await store.get(media_id)
        if info is None:
            raise not_found("Unknown media")
        return info

    async def info(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        server_name, media_id = target(request)
        if is_local(server_name):
            return json_response({"media_info": media_json(await known(media_id))})
        meta = await remote_meta(server_name, media_id)
        return json_response({"media_info": remote_json(server_name, media_id, meta)})

    async def delete_one(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        server_name, media_id = target(request)
        if is_local(server_name):
            await known(media_id)
            return _deleted(await repo.delete_local([media_id]))
        if not await asyncio.to_thread(cache.delete, server_name, media_id):
            raise not_found("Unknown media (not cached here)")
        return _deleted([media_id])

    async def delete_old(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        if "before_ts" not in request.query:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: before_ts")
        before_ts = query_int(request, "before_ts", 0)
        size_gt = query_int(request, "size_gt", 0)
        keep = request.query.get("keep_profiles", "true")
        if keep not in ("true", "false"):
            raise MatrixError(400, Codes.INVALID_PARAM, "keep_profiles must be true or false")
        ids = await store.ids_before(before_ts, size_gt)
        if keep == "true" and ids:
            spared = await store.avatar_media_ids(hs.server_name)
            ids = [m for m in ids if m not in spared]
        return _deleted(await repo.delete_local(ids))

    async def purge_cache(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        if "before_ts" not in request.query:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: before_ts")
        return json_response({"deleted": await repo.purge_remote_cache(query_int(request, "before_ts", 0))})

    async def user_media(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        user_id = request.match_info["user_id"]
        if await hs.accounts.get_user(user_id) is None:
            raise not_found("Unknown user")
        offset = query_int(request, "from", 0)
        limit = min(query_int(request, "limit", 100, minimum=1), MAX_PAGE)
        direction = request.query.get("dir", "b")
        if direction not in ("f", "b"):
            raise MatrixError(400, Codes.INVALID_PARAM, "dir must be f or b")
        if request.method == "DELETE":
            found, _ = await store.of_user(user_id, 0, None)
            return _deleted(await repo.delete_local([m.media_id for m in found]))
        found, total = await store.of_user(user_id, offset, limit, newest_first=direction == "b")
        body: dict[str, Any] = {"media": [media_json(m) for m in found], "total": total}
        if offset + len(found) < total:
            body["next_token"] = offset + len(found)
        return json_response(body)

    async def usage_statistics(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        offset = query_int(request, "from", 0)
        limit = min(query_int(request, "limit", 100, minimum=1), MAX_PAGE)
        order_by = request.query.get("order_by", "user_id")
        if order_by not in STATISTICS_ORDERS:
            raise invalid_param(f"order_by must be one of {', '.join(STATISTICS_ORDERS)}")
        from_ts = query_int(request, "from_ts", 0)
        until_ts = query_int(request, "until_ts", 0) if "until_ts" in request.query else None
        if until_ts is not None and until_ts < from_ts:
            raise invalid_param("until_ts must be at least from_ts")
        search = request.query.get("search_term")
        if search is not None and not search:
            raise invalid_param("search_term cannot be empty")
        found, total = await store.usage_by_user(
            offset, limit, order_by, dir_backwards(request), from_ts, until_ts, search
        )
        body: dict[str, Any] = {"users": found, "total": total}
        if offset + len(found) < total:
            body["next_token"] = offset + len(found)
        return json_response(body)

    one = V1 + "/media/{server_name}/{media_id}"
    app.router.add_routes(
        [
            web.post(V1 + "/media/delete", delete_old),
            web.post(V1 + "/purge_media_cache", purge_cache),
            web.get(one, info),
            web.delete(one, delete_one),
            web.get(V1 + "/statistics/users/media", usage_statistics),
            web.get(V1 + "/users/{user_id}/media", user_media),
            web.delete(V1 + "/users/{user_id}/media", user_media),
        ]
    )
