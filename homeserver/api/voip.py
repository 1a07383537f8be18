"""GET /voip/turnServer: TURN credentials for VoIP calls.

With `voip.turn_shared_secret`, every user gets credentials that expire after
`turn_user_lifetime_ms`, in the TURN REST API scheme that coturn checks with
`use-auth-secret`: the username is "<expiry, seconds since the epoch>:<user ID>" and the
password the base64 HMAC-SHA1 of that username under the shared secret. With fixed
`turn_username`/`turn_password`, those are handed out. With no `turn_uris` the answer is
an empty object, as Synapse's: clients then call without a relay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from aiohttp import web

from homeserver.api.http import V3, json_response
from homeserver.config import VoipConfig
from homeserver.server import HomeServer


def turn_credentials(voip: VoipConfig, user_id: str, now_ms: int) -> dict[str, Any]:
    if not voip.turn_uris:
        return {}
    ttl_ms = voip.turn_user_lifetime_ms
    if voip.turn_shared_secret is not None:
        username = f"{(now_ms + ttl_ms) // 1000}:{user_id}"
        digest = hmac.new(voip.turn_shared_secret.encode(), username.encode(), hashlib.sha1).digest()
        password = base64.b64encode(digest).decode()
    elif voip.turn_username is not None and voip.turn_password is not None:
        username, password = voip.turn_username, voip.turn_password
    else:
        return {}
    return {"username": username, "password": password, "uris": list(voip.turn_uris), "ttl": ttl_ms // 1000}


def setup(app: web.Application, hs: HomeServer) -> None:
    async def turn_server(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        return json_response(turn_credentials(hs.config.voip, requester.user_id, hs.clock.time_ms()))

    app.router.add_routes([web.get(V3 + "/voip/turnServer", turn_server)])
