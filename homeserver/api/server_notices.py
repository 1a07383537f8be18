"""Sending server notices (server admins only), in Synapse's admin API shape:

    POST /_synapse/admin/v1/send_server_notice           {user_id, content, type?, state_key?}
    PUT  /_synapse/admin/v1/send_server_notice/{txnId}   the same, once per transaction ID

Both answer {"event_id": ...}. See homeserver.handlers.server_notices.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.admin import V1, require_admin
from homeserver.api.http import json_response, read_json
from homeserver.errors import Codes, MatrixError, bad_json, optional_str, require_str
from homeserver.handlers.server_notices import ServerNotices
from homeserver.server import HomeServer

PATH = V1 + "/send_server_notice"


SERVER_NOTICES_KEY = web.AppKey("sotto.server_notices", ServerNotices)


def get_server_notices(app: web.Application, hs: HomeServer) -> ServerNotices:
    """The app's one sender of server notices (the admin API's and the consent notices share
    it, so that two notices at once to a new user do not make two rooms)."""
    if SERVER_NOTICES_KEY not in app:
        app[SERVER_NOTICES_KEY] = ServerNotices(
            hs.config.server_notices,
            hs.server_name,
            hs.accounts,
            hs.events,
            hs.rooms,
            hs.account_data,
            hs.notifier,
            hs.clock,
        )
    return app[SERVER_NOTICES_KEY]


def setup(app: web.Application, hs: HomeServer) -> None:
    notices = get_server_notices(app, hs)

    async def refuse_rejecting(room_id: str, user_id: str) -> None:
        if await notices.is_notice_invite(room_id, user_id):
            raise MatrixError(
                403,
                Codes.CANNOT_LEAVE_SERVER_NOTICE_ROOM,
                "The server notices room's invite cannot be rejected",
            )

    hs.rooms.leave_guards.append(refuse_rejecting)

    async def send(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        body = await read_json(request)
        user_id = require_str(body, "user_id")
        content: Any = body.get("content")
        if not isinstance(content, dict):
            raise bad_json("content must be an object")
        event_type = optional_str(body, "type") or "m.room.message"
        state_key = optional_str(body, "state_key")
        txn_id = request.match_info.get("txn_id")
        event_id = await notices.send(user_id, content, event_type, state_key, txn_id)
        return json_response({"event_id": event_id})

    app.router.add_routes([web.post(PATH, send), web.put(PATH + "/{txn_id}", send)])
