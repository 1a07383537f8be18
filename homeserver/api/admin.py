"""The Synapse-compatible admin API subset under /_synapse/admin (server admins only).

    GET    /_synapse/admin/v1/server_version
    GET    /_synapse/admin/v2/users                      list users (from, limit, name, user_id,
                                                         guests, deactivated, admins, order_by, dir)
    GET    /_synapse/admin/v2/users/{user_id}            query one user
    POST   /_synapse/admin/v1/deactivate/{user_id}       {"erase": bool}
    POST   /_synapse/admin/v1/reset_password/{user_id}   {"new_password": str, "logout_devices": bool}
    GET    /_synapse/admin/v1/rooms                      list rooms (from, limit, order_by, dir,
                                                         search_term)
    GET    /_synapse/admin/v1/rooms/{room_id}            room details (also /members, /state,
                                                         /messages and /context/{event_id}:
                                                         over the whole history)
    DELETE /_synapse/admin/v1/rooms/{room_id}            delete (and by default purge) a room
    DELETE /_synapse/admin/v2/rooms/{room_id}            the same in the background: {"delete_id"}
                                                         (both take "block": true, v1 also for a
                                                         room unknown here)
    GET/PUT /_synapse/admin/v1/rooms/{room_id}/block     whether local users may join (invite, knock)
    POST   /_synapse/admin/v1/purge_history/{room_id}[/{event_id}]  delete old messages: {"purge_id"}
    GET    /_synapse/admin/v1/purge_history_status/{purge_id}
    GET    /_synapse/admin/v2/rooms/{room_id}/delete_status, /v2/rooms/delete_status/{delete_id}

Creating and changing accounts is in admin_users.py, users' reports in admin_reports.py,
registration tokens in admin_registration_tokens.py, local media in admin_media.py,
quarantine in admin_quarantine.py, redacting a user's events in admin_redact.py, room repair
(make_room_admin, forward extremities, fetch_event) in admin_rooms.py, federation
destinations in bridge/admin.py, lookups (username, SSO link, account data, invite
and join counts) in admin_lookups.py, registration by shared secret in
shared_secret_registration.py. Anyone else gets 403
M_FORBIDDEN (401 without a valid token), whatever the path names.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.devices import get_device_handler
from homeserver.api.events_api import read_context, read_messages
from homeserver.api.http import json_response, query_int, read_json
from homeserver.errors import Codes, MatrixError, bad_json, forbidden, require_str
from homeserver.handlers.acting import ADMIN, act_as
from homeserver.handlers.admin import AdminHandler, server_version
from homeserver.handlers.auth import Requester
from homeserver.handlers.messages import Window
from homeserver.handlers.retention import RetentionPurger, RetentionSettings
from homeserver.server import HomeServer
from homeserver.storage.admin import AdminStore

ADMIN_KEY = web.AppKey("sotto.admin", AdminHandler)
RETENTION_KEY = web.AppKey("sotto.retention", RetentionPurger)

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"


def _bool_query(request: web.Request, name: str, default: bool | None) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false"):
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name} must be true or false")
    return raw.lower() == "true"


def dir_backwards(request: web.Request) -> bool:
    direction = request.query.get("dir", "f")
    if direction not in ("f", "b"):
        raise MatrixError(400, Codes.INVALID_PARAM, "dir must be f or b")
    return direction == "b"


def _bool_body(body: dict[str, object], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise bad_json(f"{key} must be a boolean")
    return value


async def require_admin(hs: HomeServer, request: web.Request) -> Requester:
    requester = await hs.auth.get_requester(request)
    if not requester.is_admin:
        raise forbidden("You are not a server admin")
    act_as(ADMIN)  # what it sends as other users is the admin's doing (consent, handlers/acting.py)
    return requester


def setup(app: web.Application, hs: HomeServer) -> None:
    admin = AdminHandler(
        AdminStore(hs.db, hs.server_name),
        hs.accounts,
        hs.events,
        hs.aliases,
        hs.creator,
        hs.auth,
        hs.passwords,
        get_device_handler(app, hs),
        hs.clock,
        hs.server_name,
    )
    app[ADMIN_KEY] = admin

    async def version(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response({"server_version": server_version()})

    async def list_users(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(
            await admin.list_users(
                offset=query_int(request, "from", 0),
                limit=query_int(request, "limit", 100, minimum=1),
                name=request.query.get("name"),
                user_id=request.query.get("user_id"),
                guests=bool(_bool_query(request, "guests", True)),
                deactivated=bool(_bool_query(request, "deactivated", False)),
                admins=_bool_query(request, "admins", None),
                order_by=request.query.get("order_by", "name"),
                backwards=dir_backwards(request),
            )
        )

    async def query_user(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(await admin.query_user(request.match_info["user_id"]))

    async def deactivate(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        body = await read_json(request, allow_empty=True)
        erase = _bool_body(body, "erase", False)
        return json_response(await admin.deactivate(request.match_info["user_id"], erase=erase))

    async def reset_password(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        body = await read_json(request)
        password = require_str(body, "new_password")
        logout = _bool_body(body, "logout_devices", True)
        await admin.reset_password(request.match_info["user_id"], password, logout_devices=logout)
        return json_response({})

    async def list_rooms(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(
            await admin.list_rooms(
                offset=query_int(request, "from", 0),
                limit=query_int(request, "limit", 100, minimum=1),
                order_by=request.query.get("order_by", "name"),
                backwards=dir_backwards(request),
                search_term=request.query.get("search_term"),
            )
        )

    async def room_details(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(await admin.room_details(request.match_info["room_id"]))

    async def room_members(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(await admin.room_members(request.match_info["room_id"]))

    async def room_state(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(await admin.room_state(request.match_info["room_id"]))

    async def delete_room(request: web.Request) -> web.Response:
        requester = await require_admin(hs, request)
        room_id = request.match_info["room_id"]
        purge, block = admin.parse_delete(await read_json(request, allow_empty=True))
        if block:
            # First, so that no one joins while the room is emptied. A room this server
            # does not know can be blocked too (v1 only, as in Synapse).
            await admin.block_room(room_id, requester.user_id)
            if await hs.events.get_room_version(room_id) is None:
                return json_response(
                    {"kicked_users": [], "failed_to_kick_users": [], "local_aliases": [], "new_room_id": None}
                )
        return json_response(await admin.delete_room(room_id, purge=purge))

    async def delete_room_v2(request: web.Request) -> web.Response:
        requester = await require_admin(hs, request)
        room_id = request.match_info["room_id"]
        purge, block = admin.parse_delete(await read_json(request, allow_empty=True))
        if await hs.events.get_room_version(room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        if block:
            await admin.block_room(room_id, requester.user_id)
        return json_response({"delete_id": admin.start_delete(room_id, purge=purge)})

    async def purge_history(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        body = await read_json(request, allow_empty=True)
        local_too = body.get("delete_local_events", False)
        if not isinstance(local_too, bool):
            raise MatrixError(400, Codes.BAD_JSON, "delete_local_events must be a boolean")
        event_id = request.match_info.get("event_id") or body.get("purge_up_to_event_id")
        if event_id is not None and not isinstance(event_id, str):
            raise MatrixError(400, Codes.BAD_JSON, "purge_up_to_event_id must be a string")
        room_id = request.match_info["room_id"]
        cut = await admin.purge_cut(room_id, event_id, body.get("purge_up_to_ts"))
        return json_response({"purge_id": admin.start_purge_history(room_id, cut, local_too)})

    async def purge_history_status(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(admin.purge_status(request.match_info["purge_id"]))

    async def get_block(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        by = await hs.events.room_blocked_by(request.match_info["room_id"])
        return json_response({"block": True, "user_id": by} if by is not None else {"block": False})

    async def put_block(request: web.Request) -> web.Response:
        requester = await require_admin(hs, request)
        body = await read_json(request)
        block = body.get("block")
        if not isinstance(block, bool):
            raise MatrixError(400, Codes.BAD_JSON, "block must be a boolean")
        await admin.block_room(request.match_info["room_id"], requester.user_id if block else None)
        return json_response({"block": block})

    async def delete_status_by_room(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(admin.delete_statuses(request.match_info["room_id"]))

    async def delete_status_by_id(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(admin.delete_status(request.match_info["delete_id"]))

    async def room_messages(request: web.Request) -> web.Response:
        """A room's history for a server admin reviewing it (reports, say), whether or not
        they are in the room: /messages over all of the history this server holds."""
        requester = await require_admin(hs, request)
        room_id = request.match_info["room_id"]
        if await hs.events.get_room_version(room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        window = Window(None, hs.db.current_stream_id)
        return json_response(await read_messages(hs.messages, request, requester.user_id, None, window))

    async def room_context(request: web.Request) -> web.Response:
        """/context for a server admin, over all of the room's history (a reported event and
        what surrounds it), whether or not they are in the room."""
        requester = await require_admin(hs, request)
        if await hs.events.get_room_version(request.match_info["room_id"]) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room not found")
        window = Window(None, hs.db.current_stream_id)
        return json_response(await read_context(hs.messages, request, requester.user_id, None, window))

    if hs.config.retention.enabled:
        settings = RetentionSettings.from_config(hs.config.retention)
        app[RETENTION_KEY] = RetentionPurger(hs, admin.store, settings)
        hs.background.append(app[RETENTION_KEY])

    async def finish_deletes(_app: web.Application) -> None:
        await admin.wait_for_deletes()

    app.on_shutdown.append(finish_deletes)
    app.router.add_routes(
        [
            web.get(V1 + "/server_version", version),
            web.get(V2 + "/users", list_users),
            web.get(V2 + "/users/{user_id}", query_user),
            web.post(V1 + "/deactivate/{user_id}", deactivate),
            web.post(V1 + "/reset_password/{user_id}", reset_password),
            web.get(V1 + "/rooms", list_rooms),
            web.get(V1 + "/rooms/{room_id}", room_details),
            web.get(V1 + "/rooms/{room_id}/members", room_members),
            web.get(V1 + "/rooms/{room_id}/state", room_state),
            web.get(V1 + "/rooms/{room_id}/messages", room_messages),
            web.get(V1 + "/rooms/{room_id}/context/{event_id}", room_context),
            web.get(V1 + "/rooms/{room_id}/block", get_block),
            web.post(V1 + "/purge_history/{room_id}", purge_history),
            web.post(V1 + "/purge_history/{room_id}/{event_id}", purge_history),
            web.get(V1 + "/purge_history_status/{purge_id}", purge_history_status),
            web.put(V1 + "/rooms/{room_id}/block", put_block),
            web.delete(V1 + "/rooms/{room_id}", delete_room),
            web.delete(V2 + "/rooms/{room_id}", delete_room_v2),
            web.get(V2 + "/rooms/{room_id}/delete_status", delete_status_by_room),
            web.get(V2 + "/rooms/delete_status/{delete_id}", delete_status_by_id),
        ]
    )
