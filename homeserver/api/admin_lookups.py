"""The admin API's lookups about users (server admins only), in Synapse's shape:

GET /_synapse/admin/v1/username_available?username=<localpart>
    {"available": true}, or the error /register/available gives; works when registration
    is closed, as in Synapse
GET /_synapse/admin/v1/auth_providers/{provider}/users/{external_id}   {"user_id": ...}
GET /_synapse/admin/v1/threepid/{medium}/users/{address}               {"user_id": ...}
GET /_synapse/admin/v1/users/{userId}/accountdata
    {"account_data": {"global": {type: content}, "rooms": {room_id: {type: content}}}}
GET /_synapse/admin/v1/users/{userId}/sent_invite_count?from_ts=<ms>
    {"invite_count": n}: the invites the user sent at or after from_ts
GET /_synapse/admin/v1/users/{userId}/cumulative_joined_room_count?from_ts=<ms>
    {"cumulative_joined_room_count": n}: the rooms the user joined at or after from_ts,
    left since or not (homeserver/storage/membership_counts.py)

The two lookups answer 404 M_NOT_FOUND "User not found" when no user matches (email
addresses are matched lower-cased, as they are stored: homeserver/handlers/threepids.py).
The per-user ones take local users only: 400 for a remote user, 404 for an unknown one.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.admin import ADMIN_KEY, V1, require_admin
from homeserver.api.http import json_response, query_int
from homeserver.errors import missing_param, not_found
from homeserver.handlers.registration import check_username_free
from homeserver.server import HomeServer
from homeserver.storage import membership_counts
from homeserver.storage.threepids import email_key

# The largest value a BIGINT column compares with; later times are all alike.
MAX_TS = 2**63 - 1


def _required_ts(request: web.Request) -> int:
    if "from_ts" not in request.query:
        raise missing_param("from_ts")
    return query_int(request, "from_ts", 0, maximum=MAX_TS)


def setup(app: web.Application, hs: HomeServer) -> None:
    admin = app[ADMIN_KEY]

    async def username_available(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        username = request.query.get("username")
        if username is None:
            raise missing_param("username")
        await check_username_free(hs.accounts, hs.appservices, hs.server_name, username)
        return json_response({"available": True})

    async def by_external_id(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        found = await admin.external_ids.user_for(
            request.match_info["provider"], request.match_info["external_id"]
        )
        if found is None:
            raise not_found("User not found")
        return json_response({"user_id": found})

    async def by_threepid(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        medium, address = request.match_info["medium"], request.match_info["address"]
        if medium == "email":
            address = email_key(address)
        found = await admin.threepids.user_for(medium, address)
        if found is None:
            raise not_found("User not found")
        return json_response({"user_id": found})

    async def local_user(request: web.Request) -> str:
        await require_admin(hs, request)
        user_id = request.match_info["user_id"]
        await admin.query_user(user_id)  # 404 for an unknown user, 400 for a remote one
        return user_id

    async def account_data(request: web.Request) -> web.Response:
        user_id = await local_user(request)
        everything, by_room = await hs.account_data.get_since(user_id, None, hs.db.current_stream_id)
        return json_response({"account_data": {"global": everything, "rooms": by_room}})

    async def sent_invite_count(request: web.Request) -> web.Response:
        user_id = await local_user(request)
        count = await membership_counts.sent_invite_count(hs.db, user_id, _required_ts(request))
        return json_response({"invite_count": count})

    async def joined_room_count(request: web.Request) -> web.Response:
        user_id = await local_user(request)
        count = await membership_counts.joined_room_count(hs.db, user_id, _required_ts(request))
        return json_response({"cumulative_joined_room_count": count})

    path = V1 + "/users/{user_id}"
    app.router.add_routes(
        [
            web.get(V1 + "/username_available", username_available),
            web.get(V1 + "/auth_providers/{provider}/users/{external_id}", by_external_id),
            web.get(V1 + "/threepid/{medium}/users/{address}", by_threepid),
            web.get(path + "/accountdata", account_data),
            web.get(path + "/sent_invite_count", sent_invite_count),
            web.get(path + "/cumulative_joined_room_count", joined_room_count),
        ]
    )
