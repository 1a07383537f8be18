"""The admin API's account changes (server admins only), in Synapse's shape:

PUT /_synapse/admin/v2/users/{userId}               create or change an account
GET /_synapse/admin/v1/users/{userId}/admin         {"admin": bool}
PUT /_synapse/admin/v1/users/{userId}/admin         {"admin": bool}
GET /_synapse/admin/v1/users/{userId}/joined_rooms  {"joined_rooms": [...], "total": n}
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.admin import ADMIN_KEY, V1, V2, require_admin
from homeserver.api.http import json_response, read_json
from homeserver.api.profile import get_profile_handler
from homeserver.errors import require_bool
from homeserver.handlers.admin_users import AdminUsers
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    admin = app[ADMIN_KEY]
    users = AdminUsers(admin, get_profile_handler(app, hs))

    async def put_user(request: web.Request) -> web.Response:
        requester = await require_admin(hs, request)
        status, body = await users.put(requester, request.match_info["user_id"], await read_json(request))
        return json_response(body, status=status)

    async def get_admin(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        user = await admin.query_user(request.match_info["user_id"])
        return json_response({"admin": user["admin"]})

    async def put_admin(request: web.Request) -> web.Response:
        requester = await require_admin(hs, request)
        flag = require_bool(await read_json(request), "admin")
        await users.set_admin(requester, request.match_info["user_id"], flag)
        return json_response({})

    async def joined_rooms(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        user_id = request.match_info["user_id"]
        await admin.query_user(user_id)  # 404 for an unknown user, 400 for a remote one
        rooms = [
            r
            for r, membership, _, _ in await hs.events.get_memberships_for_user(user_id)
            if membership == "join"
        ]
        return json_response({"joined_rooms": sorted(rooms), "total": len(rooms)})

    path = V1 + "/users/{user_id}"
    app.router.add_routes(
        [
            web.put(V2 + "/users/{user_id}", put_user),
            web.get(path + "/admin", get_admin),
            web.put(path + "/admin", put_admin),
            web.get(path + "/joined_rooms", joined_rooms),
        ]
    )
