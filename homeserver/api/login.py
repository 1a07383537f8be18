"""Login and logout: GET/POST /login (password or `m.login.token`), POST /login/get_token,
POST /refresh, POST /logout, POST /logout/all."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.devices import get_device_handler
from homeserver.api.http import V1, V3, json_response, read_json
from homeserver.api.register import client_address, get_uia
from homeserver.appservice import accounts as appservice_accounts
from homeserver.handlers.registration import LoginHandler
from homeserver.handlers.sso import sso_login_flow
from homeserver.server import HomeServer
from homeserver.storage.oauth import OAuthStore
from homeserver.storage.openid import login_token_store
from homeserver.storage.threepids import ThreepidStore


def setup(app: web.Application, hs: HomeServer) -> None:
    login_handler = LoginHandler(
        hs.config, hs.accounts, hs.passwords, hs.auth, hs.clock, login_token_store(hs.db)
    )
    if hs.config.email.enabled:
        login_handler.threepids = ThreepidStore(hs.db)
    uia = get_uia(app, hs)
    devices = get_device_handler(app, hs)
    auth = hs.auth
    oauth_sessions = OAuthStore(hs.db)

    flows = login_handler.flows()
    if hs.config.oidc_providers:
        flows.append(sso_login_flow(hs.config.oidc_providers))
    if hs.appservices:
        flows.append({"type": appservice_accounts.LOGIN_TYPE})

    async def login_flows(request: web.Request) -> web.Response:
        return json_response({"flows": flows})

    async def login(request: web.Request) -> web.Response:
        body = await read_json(request)
        if body.get("type") == appservice_accounts.LOGIN_TYPE:
            service = appservice_accounts.appservice_of(hs, request)
            return json_response(await appservice_accounts.login(hs, service, body))
        return json_response(await login_handler.login(body, client_address(request)))

    async def get_token(request: web.Request) -> web.Response:
        # Another device signs in with the token (m.login.token): the password first, again.
        requester = await auth.get_requester(request)
        login_handler.limiter.check(client_address(request))
        body = await read_json(request, allow_empty=True)
        result = await uia.check(
            operation="POST /login/get_token",
            flows=uia.user_flows(),
            auth=body.get("auth"),
            requester=requester.user_id,
        )
        issued = await login_handler.issue_login_token(requester.user_id)
        await uia.finish(result)
        return json_response(issued)

    async def refresh(request: web.Request) -> web.Response:
        body = await read_json(request)
        return json_response(await login_handler.refresh(body, client_address(request), oauth_sessions))

    # A locked account may still log out (the spec's only exceptions to M_USER_LOCKED).
    async def logout(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True, allow_locked=True)
        # Logging out deletes the token's device too (and, through the hooks, its E2EE keys
        # and pushers).
        await devices.delete_devices(requester.user_id, [requester.device_id])
        auth.invalidate([requester.token_hash])
        return json_response({})

    async def logout_all(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True, allow_locked=True)
        await devices.delete_devices(requester.user_id, None)
        auth.invalidate_user(requester.user_id)
        return json_response({})

    app.router.add_routes(
        [
            web.get(V3 + "/login", login_flows),
            web.post(V3 + "/login", login),
            web.post(V3 + "/logout", logout),
            web.post(V3 + "/logout/all", logout_all),
            web.post(V3 + "/refresh", refresh),
            web.post(V1 + "/login/get_token", get_token),
        ]
    )
