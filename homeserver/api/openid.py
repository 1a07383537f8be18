"""POST /user/{userId}/openid/request_token: a token a third party (an integration manager,
a widget's backend) can check with this server to learn who the user is.

The third party checks it at GET /_matrix/federation/v1/openid/userinfo on the federation
listener (bridge.server), which answers {"sub": user_id} while the token lives (an hour).
The token grants nothing else: it is not an access token, and is stored only hashed.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.errors import forbidden
from homeserver.handlers.auth import generate_token, hash_token
from homeserver.server import HomeServer
from homeserver.storage.openid import openid_store

TOKEN_LIFETIME_MS = 3600 * 1000


def setup(app: web.Application, hs: HomeServer) -> None:
    store = openid_store(hs.db)

    async def request_token(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        if request.match_info["user_id"] != requester.user_id:
            raise forbidden("You may only request OpenID tokens for yourself")
        await read_json(request, allow_empty=True)
        token = generate_token("oid")
        now = hs.clock.time_ms()
        await store.add(hash_token(token), requester.user_id, now + TOKEN_LIFETIME_MS, now)
        return json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "matrix_server_name": hs.server_name,
                "expires_in": TOKEN_LIFETIME_MS // 1000,
            }
        )

    app.router.add_routes([web.post(V3 + "/user/{user_id}/openid/request_token", request_token)])
