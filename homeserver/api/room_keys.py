"""/room_keys/version and /room_keys/keys: server-side key backup."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.api.keys import e2ee_services
from homeserver.handlers.key_backup import parse_key_data, parse_rooms, parse_sessions, parse_version_body
from homeserver.server import HomeServer
from homeserver.storage.key_backup import RoomKey
from homeserver.types import JsonDict


def setup(app: web.Application, hs: HomeServer) -> None:
    backup = e2ee_services(app, hs).backup
    auth = hs.auth

    async def create_version(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        algorithm, auth_data = parse_version_body(await read_json(request))
        return json_response(await backup.create_version(requester.user_id, algorithm, auth_data))

    async def get_version(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        return json_response(await backup.get_version(requester.user_id, request.match_info.get("version")))

    async def update_version(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request)
        await backup.update_version(requester.user_id, request.match_info["version"], body)
        return json_response({})

    async def delete_version(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        await backup.delete_version(requester.user_id, request.match_info["version"])
        return json_response({})

    def keys_in(request: web.Request, body: JsonDict) -> list[RoomKey]:
        room_id = request.match_info.get("room_id")
        session_id = request.match_info.get("session_id")
        if room_id is None:
            return parse_rooms(body)
        if session_id is None:
            return parse_sessions(room_id, body)
        return [parse_key_data(room_id, session_id, body)]

    async def put_keys(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        keys = keys_in(request, await read_json(request))
        return json_response(await backup.put_keys(requester.user_id, request.query.get("version"), keys))

    async def get_keys(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        return json_response(
            await backup.get_keys(
                requester.user_id,
                request.query.get("version"),
                request.match_info.get("room_id"),
                request.match_info.get("session_id"),
            )
        )

    async def delete_keys(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        return json_response(
            await backup.delete_keys(
                requester.user_id,
                request.query.get("version"),
                request.match_info.get("room_id"),
                request.match_info.get("session_id"),
            )
        )

    routes = [
        web.post(V3 + "/room_keys/version", create_version),
        web.get(V3 + "/room_keys/version", get_version),
        web.get(V3 + "/room_keys/version/{version}", get_version),
        web.put(V3 + "/room_keys/version/{version}", update_version),
        web.delete(V3 + "/room_keys/version/{version}", delete_version),
    ]
    for path in ("/room_keys/keys", "/room_keys/keys/{room_id}", "/room_keys/keys/{room_id}/{session_id}"):
        routes += [
            web.put(V3 + path, put_keys),
            web.get(V3 + path, get_keys),
            web.delete(V3 + path, delete_keys),
        ]
    app.router.add_routes(routes)
