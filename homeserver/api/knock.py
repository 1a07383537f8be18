"""Knocking on a room (POST /knock/{roomIdOrAlias}), room versions 7 and later."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.errors import Codes, MatrixError, forbidden, optional_str
from homeserver.handlers.auth import refuse_if_suspended
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth

    async def _knock_content(user_id: str, reason: str | None) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": "knock"}
        profile = await hs.accounts.get_user(user_id)
        if profile:
            for key in ("displayname", "avatar_url"):
                if profile.get(key):
                    content[key] = profile[key]
        if reason:
            content["reason"] = reason
        return content

    async def knock(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        refuse_if_suspended(requester)
        body = await read_json(request, allow_empty=True)
        reason = optional_str(body, "reason")
        room_id, servers = await hs.rooms.resolve_room(request.match_info["room"])
        await hs.rooms.refuse_if_blocked(room_id)
        rv = await hs.events.get_room_version(room_id)
        if hs.rooms.remote_knock is not None and (
            rv is None or ("m.room.create", "") not in await hs.events.get_current_state_ids(room_id)
        ):
            # A room this server is not in: knock over federation (make_knock/send_knock).
            servers = servers + request.query.getall("via", []) + request.query.getall("server_name", [])
            extra = await _knock_content(requester.user_id, reason)
            return json_response(
                {"room_id": await hs.rooms.remote_knock(requester.user_id, room_id, servers, extra)}
            )
        if rv is None:
            # Knocking on a room this server is not in needs federation (make_knock/send_knock).
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        if not rv.knock_join_rule:
            raise MatrixError(
                400, Codes.INCOMPATIBLE_ROOM_VERSION, "This room version does not support knocking"
            )
        current = await hs.events.get_membership(room_id, requester.user_id)
        if current is not None and current[0] in ("join", "ban"):
            raise forbidden(f"You are already {'in' if current[0] == 'join' else 'banned from'} this room")
        content = await _knock_content(requester.user_id, reason)
        await hs.creator.create_and_send(
            room_id=room_id,
            type="m.room.member",
            sender=requester.user_id,
            content=content,
            state_key=requester.user_id,
        )
        return json_response({"room_id": room_id})

    app.router.add_routes([web.post(V3 + "/knock/{room}", knock)])
