"""Room tags (/user/{userId}/rooms/{roomId}/tags), stored as the room's m.tag account data."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.errors import Codes, MatrixError, forbidden
from homeserver.server import HomeServer

MAX_TAG_BYTES = 255
MAX_TAGS = 100


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth

    async def _own(request: web.Request) -> tuple[str, str]:
        requester = await auth.get_requester(request)
        if request.match_info["user_id"] != requester.user_id:
            raise forbidden("Cannot access another user's tags")
        return requester.user_id, request.match_info["room_id"]

    async def _tags(user_id: str, room_id: str) -> dict[str, Any]:
        content = await hs.account_data.get(user_id, room_id, "m.tag") or {}
        tags = content.get("tags")
        return dict(tags) if isinstance(tags, dict) else {}

    async def _save(user_id: str, room_id: str, tags: dict[str, Any]) -> None:
        await hs.account_data.set(user_id, room_id, "m.tag", {"tags": tags})
        hs.notifier.notify(users=[user_id])

    async def get_tags(request: web.Request) -> web.Response:
        user_id, room_id = await _own(request)
        return json_response({"tags": await _tags(user_id, room_id)})

    async def put_tag(request: web.Request) -> web.Response:
        user_id, room_id = await _own(request)
        tag = request.match_info["tag"]
        if not tag or len(tag.encode()) > MAX_TAG_BYTES:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid tag")
        body = await read_json(request, allow_empty=True)
        order = body.get("order")
        if order is not None and (isinstance(order, bool) or not isinstance(order, int | float)):
            raise MatrixError(400, Codes.BAD_JSON, "order must be a number")
        tags = await _tags(user_id, room_id)
        if tag not in tags and len(tags) >= MAX_TAGS:
            raise MatrixError(400, Codes.LIMIT_EXCEEDED, "Too many tags on this room")
        tags[tag] = body
        await _save(user_id, room_id, tags)
        return json_response({})

    async def delete_tag(request: web.Request) -> web.Response:
        user_id, room_id = await _own(request)
        tags = await _tags(user_id, room_id)
        if tags.pop(request.match_info["tag"], None) is not None:
            await _save(user_id, room_id, tags)
        return json_response({})

    base = V3 + "/user/{user_id}/rooms/{room_id}/tags"
    app.router.add_routes(
        [
            web.get(base, get_tags),
            web.put(base + "/{tag}", put_tag),
            web.delete(base + "/{tag}", delete_tag),
        ]
    )
