"""Room creation and membership endpoints."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.appservice.accounts import refuse_claimed_alias
from homeserver.errors import Codes, MatrixError, forbidden, optional_str, require_str
from homeserver.handlers.auth import refuse_if_suspended
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    rooms = hs.rooms
    auth = hs.auth
    guests = services(app, hs).guests

    async def create_room(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        refuse_if_suspended(requester)
        body = await read_json(request, allow_empty=True)
        name = body.get("room_alias_name")
        if isinstance(name, str):
            refuse_claimed_alias(hs, requester, f"#{name}:{hs.server_name}")
        if requester.shadow_banned and body.get("invite"):
            body = {k: v for k, v in body.items() if k != "invite"}  # the room, but no invites
        room_id, alias = await rooms.create_room(requester.user_id, body)
        out = {"room_id": room_id}
        if alias:
            out["room_alias"] = alias
        return json_response(out)

    async def join(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        refuse_if_suspended(requester)
        body = await read_json(request, allow_empty=True)
        target = request.match_info.get("room_id_or_alias") or request.match_info["room_id"]
        if requester.is_guest:
            await guests.require_can_join(target)
        servers = request.query.getall("server_name", []) + request.query.getall("via", [])
        extra = {"reason": body["reason"]} if isinstance(body.get("reason"), str) else None
        room_id = await rooms.join(requester.user_id, target, servers, extra)
        return json_response({"room_id": room_id})

    async def invite(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        refuse_if_suspended(requester)
        body = await read_json(request)
        target = require_str(body, "user_id")
        reason = optional_str(body, "reason")
        if requester.shadow_banned:
            await rooms.require_joined(requester.user_id, request.match_info["room_id"])
            return json_response({})
        await rooms.invite(
            requester.user_id, request.match_info["room_id"], target, {"reason": reason} if reason else None
        )
        return json_response({})

    async def leave(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        body = await read_json(request, allow_empty=True)
        await rooms.set_membership(
            requester.user_id,
            request.match_info["room_id"],
            requester.user_id,
            "leave",
            optional_str(body, "reason"),
        )
        return json_response({})

    def membership_of_other(membership: str) -> web.RouteDef:
        async def handler(request: web.Request) -> web.Response:
            requester = await auth.get_requester(request)
            refuse_if_suspended(requester)  # kick, ban, unban
            body = await read_json(request)
            target = require_str(body, "user_id")
            room_id = request.match_info["room_id"]
            if membership == "unban":
                await rooms.require_joined(requester.user_id, room_id)
                current = await hs.events.get_membership(room_id, target)
                if current is None or current[0] != "ban":
                    raise forbidden(f"{target} is not banned")
            await rooms.set_membership(
                requester.user_id,
                room_id,
                target,
                "leave" if membership in ("kick", "unban") else membership,
                optional_str(body, "reason"),
            )
            return json_response({})

        return web.post(V3 + "/rooms/{room_id}/" + membership, handler)

    async def forget(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        current = await hs.events.get_membership(room_id, requester.user_id)
        if current is not None and current[0] in ("join", "invite", "knock"):
            raise MatrixError(400, Codes.UNKNOWN, "You must leave the room before forgetting it")
        await hs.events.forget_room(requester.user_id, room_id)
        return json_response({})

    async def joined_rooms(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        memberships = await hs.events.get_memberships_for_user(requester.user_id)
        return json_response({"joined_rooms": [r for r, m, _, _ in memberships if m == "join"]})

    app.router.add_routes(
        [
            web.post(V3 + "/createRoom", create_room),
            web.post(V3 + "/join/{room_id_or_alias}", join),
            web.post(V3 + "/rooms/{room_id}/join", join),
            web.post(V3 + "/rooms/{room_id}/invite", invite),
            web.post(V3 + "/rooms/{room_id}/leave", leave),
            web.post(V3 + "/rooms/{room_id}/forget", forget),
            membership_of_other("kick"),
            membership_of_other("ban"),
            membership_of_other("unban"),
            web.get(V3 + "/joined_rooms", joined_rooms),
        ]
    )
