"""Account management: whoami, password change and deactivation (third-party identifiers
are in threepids.py)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.devices import get_device_handler
from homeserver.api.http import V3, json_response, read_json
from homeserver.api.register import client_address, get_uia
from homeserver.handlers.auth import AuthHandler, Requester
from homeserver.handlers.registration import AccountHandler, login_limiter, whoami
from homeserver.server import HomeServer


async def optional_requester(auth: AuthHandler, request: web.Request) -> Requester | None:
    """The requester if the request carries an access token (which must then be valid)."""
    if auth.extract_token(request) is None:
        return None
    return await auth.get_requester(request)


def setup(app: web.Application, hs: HomeServer) -> None:
    accounts = AccountHandler(
        hs.accounts,
        hs.passwords,
        hs.auth,
        get_uia(app, hs),
        get_device_handler(app, hs),
        hs.events,
        hs.creator,
        login_limiter(hs.config, hs.clock),
    )
    auth = hs.auth

    async def get_whoami(request: web.Request) -> web.Response:
        return json_response(whoami(await auth.get_requester(request, allow_guest=True)))

    async def change_password(request: web.Request) -> web.Response:
        requester = await optional_requester(auth, request)
        await accounts.change_password(requester, await read_json(request), client_address(request))
        return json_response({})

    async def deactivate(request: web.Request) -> web.Response:
        requester = await optional_requester(auth, request)
        body = await read_json(request, allow_empty=True)
        return json_response(await accounts.deactivate(requester, body, client_address(request)))

    app.router.add_routes(
        [
            web.get(V3 + "/account/whoami", get_whoami),
            web.post(V3 + "/account/password", change_password),
            web.post(V3 + "/account/deactivate", deactivate),
        ]
    )
