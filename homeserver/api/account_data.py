"""Client account data, global and per room: GET/PUT /user/{userId}[/rooms/{roomId}]/account_data/{type}.

Writes wake the user's long-polling /sync requests.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.errors import Codes, MatrixError, forbidden, invalid_param, not_found
from homeserver.handlers.auth import Requester
from homeserver.server import HomeServer

# Account data the server manages through other APIs (/read_markers, /pushrules).
SERVER_MANAGED_TYPES = frozenset({"m.fully_read", "m.push_rules"})
MAX_TYPE_LEN = 255


def _target(request: web.Request, requester: Requester) -> tuple[str | None, str]:
    """(room_id or None, type) for a request on the requester's own account data."""
    if request.match_info["user_id"] != requester.user_id:
        raise forbidden("Cannot access another user's account data")
    room_id = request.match_info.get("room_id")
    if room_id is not None and (not room_id.startswith("!") or len(room_id) > 255):
        raise invalid_param(f"{room_id} is not a valid room ID")
    type_ = request.match_info["type"]
    if not type_ or len(type_) > MAX_TYPE_LEN:
        raise invalid_param("Invalid account data type")
    return room_id, type_


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth

    async def put_account_data(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id, type_ = _target(request, requester)
        if type_ in SERVER_MANAGED_TYPES:
            raise MatrixError(405, Codes.BAD_JSON, f"Cannot set {type_} through this API")
        content = await read_json(request)
        await hs.account_data.set(requester.user_id, room_id, type_, content)
        hs.notifier.notify(users=[requester.user_id])
        return json_response({})

    async def get_account_data(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id, type_ = _target(request, requester)
        content = await hs.account_data.get(requester.user_id, room_id, type_)
        if content is None:
            raise not_found("Account data not found")
        return json_response(content)

    base = V3 + "/user/{user_id}"
    app.router.add_routes(
        [
            web.put(base + "/account_data/{type}", put_account_data),
            web.get(base + "/account_data/{type}", get_account_data),
            web.put(base + "/rooms/{room_id}/account_data/{type}", put_account_data),
            web.get(base + "/rooms/{room_id}/account_data/{type}", get_account_data),
        ]
    )
