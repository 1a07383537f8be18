"""Profiles: GET /profile/{userId} and GET/PUT/DELETE /profile/{userId}/{keyName}.

`displayname` and `avatar_url` are the historical paths and the generic
`{keyName}` route of v1.16 at once. The `ProfileHandler` is shared under
`PROFILE_HANDLER_KEY` so federation can set its `remote_lookup`.

Reading a profile may need an access token (profiles.require_auth_for_profile_requests),
and a joined room shared with the user (profiles.limit_profile_requests_to_users_who_share_rooms),
as in Synapse; other servers' profile queries (bridge/handler.py) are answered either way.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.errors import Codes, MatrixError, forbidden
from homeserver.events.identifiers import is_valid_user_id
from homeserver.handlers.auth import Requester, refuse_if_suspended
from homeserver.handlers.profile import ProfileHandler
from homeserver.server import HomeServer
from homeserver.storage.profile_fields import ProfileFieldStore
from homeserver.storage.room_lookups import mutual_rooms

PROFILE_HANDLER_KEY = web.AppKey("sotto.profile_handler", ProfileHandler)


def get_profile_handler(app: web.Application, hs: HomeServer) -> ProfileHandler:
    if PROFILE_HANDLER_KEY not in app:
        app[PROFILE_HANDLER_KEY] = ProfileHandler(
            hs.accounts, hs.events, hs.creator, hs.server_name, ProfileFieldStore(hs.db)
        )
        if hs.appservice_queries is not None:
            app[PROFILE_HANDLER_KEY].user_query = hs.appservice_queries.user
    return app[PROFILE_HANDLER_KEY]


def setup(app: web.Application, hs: HomeServer) -> None:
    profiles = get_profile_handler(app, hs)
    auth = hs.auth
    shared_rooms_only = hs.config.profiles.limit_profile_requests_to_users_who_share_rooms
    # Whether a room is shared can only be asked of a known caller: the limit implies a token.
    require_auth = hs.config.profiles.require_auth_for_profile_requests or shared_rooms_only

    async def check_lookup(request: web.Request, user_id: str) -> None:
        if not require_auth:
            return
        requester = await auth.get_requester(request)
        if not shared_rooms_only or requester.user_id == user_id:
            return
        if not is_valid_user_id(user_id):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user ID")
        if not await mutual_rooms(hs.db, requester.user_id, user_id, limit=1):
            raise forbidden("Profile isn't available")

    async def get_profile(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        await check_lookup(request, user_id)
        return json_response(await profiles.get_profile(user_id))

    async def get_field(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        await check_lookup(request, user_id)
        return json_response(await profiles.get_field(user_id, request.match_info["key"]))

    async def requester_for_field(request: web.Request) -> Requester:
        # Guests may set or remove their display name, and no other field.
        requester = await auth.get_requester(request, allow_guest=request.match_info["key"] == "displayname")
        return requester

    async def set_field(request: web.Request) -> web.Response:
        requester = await requester_for_field(request)
        refuse_if_suspended(requester)
        body = await read_json(request)
        await profiles.set_field(requester, request.match_info["user_id"], request.match_info["key"], body)
        return json_response({})

    async def delete_field(request: web.Request) -> web.Response:
        requester = await requester_for_field(request)
        await profiles.delete_field(requester, request.match_info["user_id"], request.match_info["key"])
        return json_response({})

    app.router.add_routes(
        [
            web.get(V3 + "/profile/{user_id}", get_profile),
            web.get(V3 + "/profile/{user_id}/{key}", get_field),
            web.put(V3 + "/profile/{user_id}/{key}", set_field),
            web.delete(V3 + "/profile/{user_id}/{key}", delete_field),
        ]
    )
