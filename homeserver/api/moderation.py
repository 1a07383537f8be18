"""The spec's server administration endpoints: account moderation (GET/PUT
/_matrix/client/v1/admin/lock/{userId} and /admin/suspend/{userId}) and
GET /_matrix/client/v3/admin/whois/{userId} (also /_synapse/admin/v1/whois/{userId}).

Locking refuses the account everything but logging out; suspension leaves it reading and
leaving but not joining, inviting, sending or changing its profile (see
`handlers.auth.get_requester` and `refuse_if_suspended`). Both are reversible; neither
touches the account's tokens, so its sessions carry on once the flag is cleared.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V1, V3, json_response, read_json
from homeserver.errors import Codes, MatrixError, forbidden, not_found, require_bool
from homeserver.server import HomeServer

FLAGS = {"lock": "locked", "suspend": "suspended"}


def setup(app: web.Application, hs: HomeServer) -> None:
    def route(action: str, flag: str) -> list[web.RouteDef]:
        async def target(request: web.Request) -> str:
            # Authorisation before any lookup, so non-admins cannot probe for accounts.
            requester = await hs.auth.get_requester(request)
            if not requester.is_admin:
                raise forbidden("Requesting user is not a server administrator.")
            user_id = request.match_info["user_id"]
            if user_id.partition(":")[2] != hs.config.server_name:
                raise MatrixError(400, Codes.INVALID_PARAM, "User does not belong to the local server.")
            return user_id

        async def get(request: web.Request) -> web.Response:
            moderation = await hs.accounts.get_moderation(await target(request))
            if moderation is None:
                raise not_found("User not found")
            return json_response({flag: moderation[flag]})

        async def put(request: web.Request) -> web.Response:
            user_id = await target(request)
            value = require_bool(await read_json(request), flag)
            if not await hs.accounts.set_moderation(user_id, flag, value):
                raise not_found("User not found")
            # Cached tokens carry the flags: forget them here and on every worker.
            hs.auth.invalidate_user(user_id)
            return json_response({flag: value})

        path = V1 + f"/admin/{action}/{{user_id}}"
        return [web.get(path, get), web.put(path, put)]

    async def whois(request: web.Request) -> web.Response:
        # An admin, or the user asking about themself (the spec allows either restriction).
        requester = await hs.auth.get_requester(request)
        user_id = request.match_info["user_id"]
        if not requester.is_admin and requester.user_id != user_id:
            raise forbidden("Requesting user is not a server administrator.")
        if await hs.accounts.get_moderation(user_id) is None:
            raise not_found("User not found")
        devices = {}
        for device in await hs.accounts.list_devices(user_id):
            # The last request seen from each device (user agents are not recorded).
            connection = {"ip": device.last_seen_ip, "last_seen": device.last_seen_ts}
            seen = {k: v for k, v in connection.items() if v is not None}
            devices[device.device_id] = {"sessions": [{"connections": [seen] if seen else []}]}
        return json_response({"user_id": user_id, "devices": devices})

    app.router.add_routes([r for action, flag in FLAGS.items() for r in route(action, flag)])
    # Synapse's admin API has the same lookup under its own prefix (its tools call that one).
    app.router.add_routes(
        [web.get(V3 + "/admin/whois/{user_id}", whois), web.get("/_synapse/admin/v1/whois/{user_id}", whois)]
    )
