"""Registration: POST /register, GET /register/available and registration token validity.

Also owns the app's single `UserInteractiveAuth` (`UIA_KEY`, `get_uia`), which
every UIA-protected endpoint shares so sessions are tracked in one place.
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V1, V3, json_response, read_json
from homeserver.appservice import accounts as appservice_accounts
from homeserver.errors import missing_param
from homeserver.handlers.cs_services import services
from homeserver.handlers.email_notifs import pushers_for_new_user
from homeserver.handlers.registration import RegistrationHandler
from homeserver.handlers.uia import UserInteractiveAuth
from homeserver.server import HomeServer
from homeserver.storage.uia_sessions import UIASessionStore

UIA_KEY = web.AppKey("sotto.uia", UserInteractiveAuth)


def get_uia(app: web.Application, hs: HomeServer) -> UserInteractiveAuth:
    """The app's UIA session manager, created on first use."""
    if UIA_KEY not in app:
        sessions = UIASessionStore(hs.db)
        app[UIA_KEY] = UserInteractiveAuth(hs.accounts, hs.passwords, hs.clock, hs.server_name, sessions)
    return app[UIA_KEY]


def client_address(request: web.Request) -> str:
    """The key for per-client rate limits: the peer address (a reverse proxy must preserve it)."""
    return request.remote or ""


def setup(app: web.Application, hs: HomeServer) -> None:
    registration = RegistrationHandler(
        hs.config, hs.accounts, hs.passwords, hs.auth, get_uia(app, hs), hs.clock, hs.appservices
    )
    email = hs.config.email
    if email.enable_notifs and email.notif_for_new_users:

        async def email_pusher(user_id: str) -> None:
            await pushers_for_new_user(services(app, hs).push, user_id)

        registration.on_email_registered = email_pusher

    async def register(request: web.Request) -> web.Response:
        body = await read_json(request, allow_empty=True)
        if body.get("type") == appservice_accounts.LOGIN_TYPE:
            service = appservice_accounts.appservice_of(hs, request)
            return json_response(await appservice_accounts.register(hs, service, body))
        kind = request.query.get("kind", "user")
        return json_response(await registration.register(kind, body, client_address(request)))

    async def available(request: web.Request) -> web.Response:
        username = request.query.get("username")
        if username is None:
            raise missing_param("username")
        await registration.check_username(username)
        return json_response({"available": True})

    async def token_validity(request: web.Request) -> web.Response:
        token = request.query.get("token")
        if token is None:
            raise missing_param("token")
        return json_response({"valid": await registration.token_validity(token, client_address(request))})

    app.router.add_routes(
        [
            web.post(V3 + "/register", register),
            web.get(V3 + "/register/available", available),
            web.get(V1 + "/register/m.login.registration_token/validity", token_validity),
        ]
    )
