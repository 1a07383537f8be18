"""The admin API's account changes (server admins only), in Synapse's shape:

PUT /_synapse/admin/v2/users/{userId}               create or change an account
GET /_synapse/admin/v1/users/{userId}/admin         {"admin": bool}
PUT /_synapse/admin/v1/users/{userId}/admin         {"admin": bool}
GET /_synapse/admin/v1/users/{userId}/joined_rooms  {"joined_rooms": [...], "total": n}
GET /_synapse/admin/v2/users/{userId}/devices       {"devices": [...], "total": n}
GET, PUT, DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}
POST /_synapse/admin/v2/users/{userId}/delete_devices  {"devices": [ids]}
POST /_synapse/admin/v1/join/{roomIdOrAlias}          {"user_id": ...}: puts a local user in
    a room: directly when it is public, else invited by the admin (who must be in it)
POST, DELETE /_synapse/admin/v1/users/{userId}/shadow_ban  {}: the user's sends, invites and
    typing answer success and reach no one (homeserver/handlers/shadow_ban.py), or no longer
GET, POST, DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit
    {"messages_per_second": n, "burst_count": n}: the user's own message limit (0 and 0:
    not rate limited at all); {} when none is set

Deleting a device logs it out, as the user deleting it would (its keys and to-device
messages go too).
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.admin import ADMIN_KEY, V1, V2, require_admin
from homeserver.api.devices import get_device_handler
from homeserver.api.guard import RATE_LIMIT_OVERRIDES_KEY
from homeserver.api.http import json_response, read_json
from homeserver.api.profile import get_profile_handler
from homeserver.errors import Codes, MatrixError, bad_json, optional_str, require_bool, require_str
from homeserver.handlers.admin_users import AdminUsers
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    admin = app[ADMIN_KEY]
    users = AdminUsers(admin, get_profile_handler(app, hs), email_enabled=hs.config.email.enabled)
    devices = get_device_handler(app, hs)
    push = services(app, hs).push

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

    async def target(request: web.Request) -> str:
        """The user a device request names: 404 unknown, 400 remote."""
        await require_admin(hs, request)
        user_id = request.match_info["user_id"]
        await admin.query_user(user_id)
        return user_id

    async def list_devices(request: web.Request) -> web.Response:
        found = await devices.list_devices(await target(request))
        return json_response({"devices": found, "total": len(found)})

    async def one_device(request: web.Request) -> web.Response:
        user_id = await target(request)
        device_id = request.match_info["device_id"]
        if request.method == "GET":
            return json_response(await devices.get_device(user_id, device_id))
        if request.method == "PUT":
            body = await read_json(request, allow_empty=True)
            name = optional_str(body, "display_name")
            if name is not None:
                await devices.rename_device(user_id, device_id, name)
            else:
                await devices.get_device(user_id, device_id)  # 404 for an unknown device
            return json_response({})
        await devices.delete_devices(user_id, [device_id])  # deleting an unknown one is done already
        return json_response({})

    async def user_pushers(request: web.Request) -> web.Response:
        found = await push.get_pushers(await target(request))
        return json_response({"pushers": found, "total": len(found)})

    async def delete_devices(request: web.Request) -> web.Response:
        user_id = await target(request)
        ids = (await read_json(request)).get("devices")
        if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
            raise bad_json("devices must be a list of device IDs")
        await devices.delete_devices(user_id, ids)
        return json_response({})

    async def join(request: web.Request) -> web.Response:
        requester = await require_admin(hs, request)
        user_id = require_str(await read_json(request), "user_id")
        await admin.query_user(user_id)  # 404 for an unknown user, 400 for a remote one
        target = request.match_info["room"]
        room_id, _ = await hs.rooms.resolve_room(target)
        if await hs.events.get_room_version(room_id) is not None:
            rules = await hs.events.get_current_state(room_id, [("m.room.join_rules", "")])
            rule = rules.get(("m.room.join_rules", ""))
            public = rule is not None and rule.event.content.get("join_rule") == "public"
            membership = await hs.events.get_membership(room_id, user_id)
            if not public and (membership is None or membership[0] not in ("invite", "join")):
                await hs.rooms.invite(requester.user_id, room_id, user_id)
        return json_response({"room_id": await hs.rooms.join(user_id, target)})

    async def shadow_ban(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        user_id = request.match_info["user_id"]
        await admin.query_user(user_id)  # 404 for an unknown user, 400 for a remote one
        if not await hs.accounts.set_moderation(user_id, "shadow_banned", request.method == "POST"):
            raise MatrixError(400, Codes.USER_DEACTIVATED, "The account is deactivated")
        hs.auth.invalidate_user(user_id)
        return json_response({})

    overrides = app[RATE_LIMIT_OVERRIDES_KEY]

    async def override_ratelimit(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        user_id = request.match_info["user_id"]
        await admin.query_user(user_id)  # 404 for an unknown user, 400 for a remote one
        if request.method == "POST":
            body = await read_json(request, allow_empty=True)
            values = []
            for key in ("messages_per_second", "burst_count"):
                value = body.get(key, 0)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise bad_json(f"{key} must be a whole number, 0 or more")
                values.append(value)
            await overrides.set(user_id, (values[0], values[1]))
        elif request.method == "DELETE":
            await overrides.set(user_id, None)
        found = await overrides.get(user_id)
        if found is None:
            return json_response({})
        return json_response({"messages_per_second": found[0], "burst_count": found[1]})

    path = V1 + "/users/{user_id}"
    device = V2 + "/users/{user_id}/devices/{device_id}"
    app.router.add_routes(
        [
            web.put(V2 + "/users/{user_id}", put_user),
            web.get(path + "/admin", get_admin),
            web.put(path + "/admin", put_admin),
            web.get(path + "/joined_rooms", joined_rooms),
            web.get(path + "/pushers", user_pushers),
            web.get(V2 + "/users/{user_id}/devices", list_devices),
            web.get(device, one_device),
            web.put(device, one_device),
            web.delete(device, one_device),
            web.post(V2 + "/users/{user_id}/delete_devices", delete_devices),
            web.post(V1 + "/join/{room}", join),
            *(
                web.route(m, path + "/override_ratelimit", override_ratelimit)
                for m in ("GET", "POST", "DELETE")
            ),
            web.post(path + "/shadow_ban", shadow_ban),
            web.delete(path + "/shadow_ban", shadow_ban),
        ]
    )
