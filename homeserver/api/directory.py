"""Room aliases (/directory/room), alias listing, room directory visibility and publicRooms."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, query_int, read_json
from homeserver.appservice.accounts import refuse_claimed_alias
from homeserver.errors import Codes, MatrixError, forbidden, require_str
from homeserver.handlers.power import can_send_state
from homeserver.handlers.room_directory import DEFAULT_LIMIT, DirectoryQuery, RoomDirectory
from homeserver.server import HomeServer


def _check_alias(alias: str, server_name: str) -> None:
    if not alias.startswith("#") or ":" not in alias or len(alias.encode()) > 255:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room alias")


ROOM_DIRECTORY_KEY = web.AppKey("sotto.room_directory", RoomDirectory)


def get_room_directory(app: web.Application, hs: HomeServer) -> RoomDirectory:
    """The app's public room directory (federation answers other servers from it)."""
    if ROOM_DIRECTORY_KEY not in app:
        app[ROOM_DIRECTORY_KEY] = RoomDirectory(hs.db, hs.server_name)
    return app[ROOM_DIRECTORY_KEY]


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth

    async def get_alias(request: web.Request) -> web.Response:
        alias = request.match_info["alias"]
        _check_alias(alias, hs.server_name)
        found = await hs.aliases.get(alias)
        if found is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {alias} not found")
        return json_response({"room_id": found[0], "servers": [hs.server_name]})

    async def put_alias(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        alias = request.match_info["alias"]
        _check_alias(alias, hs.server_name)
        if not alias.endswith(":" + hs.server_name):
            raise MatrixError(400, Codes.INVALID_PARAM, "Alias must be on this server")
        body = await read_json(request)
        room_id = require_str(body, "room_id")
        refuse_claimed_alias(hs, requester, alias)
        if await hs.events.get_room_version(room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        if not await hs.aliases.create(alias, room_id, requester.user_id):
            raise MatrixError(409, Codes.UNKNOWN, "Room alias already exists")
        return json_response({})

    async def delete_alias(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        alias = request.match_info["alias"]
        found = await hs.aliases.get(alias)
        if found is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room alias not found")
        _, creator = found
        service = hs.appservices.get(requester.appservice) if requester.appservice else None
        managed = service is not None and service.owns_alias(alias)
        if creator != requester.user_id and not requester.is_admin and not managed:
            raise forbidden("You did not create this alias")
        await hs.aliases.delete(alias)
        return json_response({})

    async def room_aliases(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        await hs.messages.visible_window(room_id, requester.user_id)
        return json_response({"aliases": await hs.aliases.for_room(room_id)})

    async def get_visibility(request: web.Request) -> web.Response:
        public = await hs.events.is_room_public(request.match_info["room_id"])
        if public is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        return json_response({"visibility": "public" if public else "private"})

    async def put_visibility(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        body = await read_json(request)
        visibility = body.get("visibility", "public")
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.INVALID_PARAM, "visibility must be public or private")
        m = await hs.events.get_membership(room_id, requester.user_id)
        if m is None or m[0] != "join":
            raise forbidden("You must be in the room")
        # Publishing speaks for the room: it takes the power to set its canonical alias.
        if not requester.is_admin and not await can_send_state(
            hs.events, room_id, requester.user_id, "m.room.canonical_alias"
        ):
            raise forbidden("You do not have permission to publish this room")
        await hs.events.set_room_public(room_id, visibility == "public")
        return json_response({})

    directory = get_room_directory(app, hs)
    without_auth = hs.config.room_directory.allow_public_rooms_without_auth

    async def public_rooms(request: web.Request) -> web.Response:
        server = request.query.get("server")
        remote = server is not None and server != hs.server_name
        # As Synapse: a guest's token will do wherever one is needed.
        if request.method == "POST":
            # A search always needs a token.
            await auth.get_requester(request, allow_guest=True)
            query = DirectoryQuery.from_body(await read_json(request, allow_empty=True))
        else:
            if remote or not without_auth:
                # The local directory is for signed-in users unless allowed without auth;
                # asking another server is for this server's users: no anonymous proxying.
                await auth.get_requester(request, allow_guest=True)
            paging = {
                "limit": query_int(request, "limit", DEFAULT_LIMIT),
                "since": request.query.get("since"),
            }
            query = DirectoryQuery.from_body(paging)
        return json_response(await directory.public_rooms(query, server))

    async def put_network_visibility(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        if requester.appservice is None:
            raise forbidden("Only application services publish rooms in their networks' directories")
        body = await read_json(request)
        visibility = require_str(body, "visibility")
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.INVALID_PARAM, "visibility must be public or private")
        room_id = request.match_info["room_id"]
        if await hs.events.get_room_version(room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        network = request.match_info["network_id"]
        await directory.set_network_visibility(requester.appservice, network, room_id, visibility == "public")
        return json_response({})

    app.router.add_routes(
        [
            web.put(V3 + "/directory/list/appservice/{network_id}/{room_id}", put_network_visibility),
            web.get(V3 + "/directory/room/{alias}", get_alias),
            web.put(V3 + "/directory/room/{alias}", put_alias),
            web.delete(V3 + "/directory/room/{alias}", delete_alias),
            web.get(V3 + "/rooms/{room_id}/aliases", room_aliases),
            web.get(V3 + "/directory/list/room/{room_id}", get_visibility),
            web.put(V3 + "/directory/list/room/{room_id}", put_visibility),
            web.get(V3 + "/publicRooms", public_rooms),
            web.post(V3 + "/publicRooms", public_rooms),
        ]
    )
