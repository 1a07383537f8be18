"""Third-party identifiers (email addresses, phone numbers) on accounts.

With `email.enabled` (homeserver/handlers/threepids.py does the work): `…/requestToken` for
email sends a validation link (registering: the address must be free; adding to an account:
free too; resetting a password: it must belong to an account, else `M_THREEPID_NOT_FOUND`),
the link's page validates the session (the password reset page asks to confirm with a POST
first, as Synapse's does, so that a mail scanner fetching the link validates nothing) and
then sends the browser to the request's `next_link` if it gave one (an http(s) URL, on a
host of `email.next_link_domain_whitelist` when that is set; others get 400
`M_INVALID_PARAM`),
`/account/3pid/add` (behind user-interactive auth) binds the validated address,
`/account/3pid/delete` removes one, `GET /account/3pid` lists them, and `m.3pid_changes`
is true. The links' pages are Synapse's paths:

GET  /_matrix/client/unstable/registration/email/submit_token?sid&client_secret&token
GET  /_matrix/client/unstable/add_threepid/email/submit_token?sid&client_secret&token
GET, POST /_synapse/client/password_reset/email/submit_token?sid&client_secret&token

Phone numbers (msisdn) are never supported, and no identity server is used. Without email,
the endpoints answer as the spec has a server without the medium answer, so clients show a
clear reason instead of an unknown endpoint: asking for a validation token gets 400
`M_THREEPID_MEDIUM_NOT_SUPPORTED` (once the request is well formed), adding an identifier
finds no validated session (`M_THREEPID_AUTH_FAILED`), and removing one succeeds with
`id_server_unbind_result: no-support`. Binding through an identity server always gets
`M_SERVER_NOT_TRUSTED`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.api.pages import NO_STORE, error_page, page
from homeserver.api.register import client_address, get_uia
from homeserver.errors import Codes, MatrixError, bad_json, require_str
from homeserver.handlers.cs_services import services
from homeserver.handlers.mailer import Mailer
from homeserver.handlers.threepids import (
    CLIENT_SECRET,
    SUBMIT_PATHS,
    ThreepidHandler,
    TokenRequest,
    canonical_email,
    check_next_link,
)
from homeserver.server import HomeServer
from homeserver.storage.threepids import ThreepidStore

MEDIA = ("email", "msisdn")
# Stored as a BIGINT; clients count up from 1.
MAX_SEND_ATTEMPT = 2**53
# Where a validation token may be asked for: registering, adding to an account, resetting
# a password.
TOKEN_PURPOSES = ("register", "account/3pid", "account/password")


def _client_secret(body: dict[str, Any]) -> str:
    secret = require_str(body, "client_secret")
    if not CLIENT_SECRET.fullmatch(secret):
        raise MatrixError(400, Codes.INVALID_PARAM, "client_secret is not valid")
    return secret


def check_token_request(medium: str, body: dict[str, Any]) -> None:
    """The spec's request body for `…/{medium}/requestToken`."""
    _client_secret(body)
    attempt = body.get("send_attempt")
    if attempt is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: send_attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise bad_json("send_attempt must be an integer")
    if not 0 <= attempt <= MAX_SEND_ATTEMPT:
        raise MatrixError(400, Codes.INVALID_PARAM, "send_attempt is out of range")
    if medium == "email":
        if "@" not in require_str(body, "email"):
            raise MatrixError(400, Codes.INVALID_PARAM, "email is not an email address")
    else:
        require_str(body, "country")
        require_str(body, "phone_number")
    for key in ("next_link", "id_server", "id_access_token"):
        if key in body and not isinstance(body[key], str):
            raise bad_json(f"{key} must be a string")


def not_supported(medium: str) -> MatrixError:
    what = "email addresses" if medium == "email" else "phone numbers"
    return MatrixError(400, Codes.THREEPID_MEDIUM_NOT_SUPPORTED, f"This server does not support {what}")


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth
    email = hs.config.email.enabled
    handler: ThreepidHandler | None = None
    if email:
        store = ThreepidStore(hs.db)
        uia = get_uia(app, hs)
        handler = ThreepidHandler(hs.config, store, Mailer(hs.config.email), uia, hs.clock)
        uia.email = handler
        uia.threepids = store

    async def threepids(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        found = await handler.list(requester.user_id) if handler else []
        return json_response({"threepids": [t.to_json() for t in found]})

    def request_token(purpose: str, medium: str) -> Any:
        async def on_request(request: web.Request) -> web.Response:
            body = await read_json(request)
            check_token_request(medium, body)
            if handler is None or medium != "email":
                raise not_supported(medium)
            if purpose == "register" and not hs.config.registration.enabled:
                raise MatrixError(403, Codes.FORBIDDEN, "Registration is disabled")
            next_link = body.get("next_link")
            if next_link is not None:
                check_next_link(next_link, hs.config.email.next_link_domain_whitelist)
            req = TokenRequest(
                purpose,
                body["client_secret"],
                canonical_email(body["email"]),
                body["send_attempt"],
                next_link,
            )
            return json_response(await handler.request_token(req, client_address(request)))

        return on_request

    async def add(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request)
        client_secret = _client_secret(body)
        sid = require_str(body, "sid")
        if handler is None:
            raise MatrixError(400, Codes.THREEPID_AUTH_FAILED, "No validated third-party identifier session")
        await handler.add(requester, body, client_secret, sid)
        return json_response({})

    async def add_legacy(request: web.Request) -> web.Response:
        await auth.get_requester(request)
        creds = (await read_json(request)).get("three_pid_creds")
        if not isinstance(creds, dict):
            raise bad_json("three_pid_creds must be an object")
        raise MatrixError(
            403, Codes.THREEPID_AUTH_FAILED, "The third-party credentials could not be verified"
        )

    async def bind(request: web.Request) -> web.Response:
        await auth.get_requester(request)
        body = await read_json(request)
        _client_secret(body)
        for key in ("id_server", "id_access_token", "sid"):
            require_str(body, key)
        raise MatrixError(400, Codes.SERVER_NOT_TRUSTED, "This server does not use identity servers")

    async def remove(request: web.Request) -> web.Response:
        """/delete removes the identifier from the account (if it is there); /unbind has
        nothing to do: no identity server knows of one through this server."""
        requester = await auth.get_requester(request)
        body = await read_json(request)
        medium = require_str(body, "medium")
        if medium not in MEDIA:
            raise MatrixError(400, Codes.INVALID_PARAM, "medium must be email or msisdn")
        address = require_str(body, "address")
        if "id_server" in body and not isinstance(body["id_server"], str):
            raise bad_json("id_server must be a string")
        if handler is not None and request.path.endswith("/delete"):
            if await handler.remove(requester.user_id, medium, address) and medium == "email":
                await services(app, hs).push.remove_email_pushers(requester.user_id, address)
        return json_response({"id_server_unbind_result": "no-support"})

    async def submit_params(request: web.Request) -> tuple[str, str, str] | None:
        """(sid, client_secret, token) from the link's query (or the confirmation form)."""
        values = dict(request.query)
        if request.method == "POST":
            values.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        sid, secret, token = (values.get(k) for k in ("sid", "client_secret", "token"))
        if not sid or not secret or not token:
            return None
        return sid, secret, token

    def submit_page(purpose: str) -> Any:
        async def on_submit(request: web.Request) -> web.Response:
            params = await submit_params(request)
            if handler is None:
                return error_page("Email", "This server does not validate email addresses", status=404)
            if params is None:
                return error_page("Email validation", "This link is incomplete: open it as it was sent")
            sid, secret, token = params
            if purpose == "account/password" and request.method == "GET":
                # Confirm first: mail scanners that fetch links must not validate anything.
                hidden = "".join(
                    f'<input type="hidden" name="{k}" value="{escape(v)}">'
                    for k, v in (("sid", sid), ("client_secret", secret), ("token", token))
                )
                return page(
                    "Reset your password",
                    "<p>You asked to reset the password of your account on "
                    f"{escape(hs.server_name)}. Confirm to continue in your app.</p>"
                    f'<form method="post">{hidden}<button type="submit">Confirm</button></form>',
                )
            try:
                next_link = await handler.validate_token(sid, secret, token)
            except MatrixError as e:
                return error_page("Email validation", e.message)
            if next_link is not None:
                # Checked when it was given (handlers.threepids.check_next_link), as Synapse.
                return web.Response(status=302, headers={**NO_STORE, "Location": next_link})
            then = (
                "Return to your app to choose a new password."
                if purpose == "account/password"
                else "Return to your app to continue."
            )
            return page("Email validated", f"<p>Your email address has been validated. {then}</p>")

        return on_submit

    routes = [
        web.get(V3 + "/account/3pid", threepids),
        web.post(V3 + "/account/3pid", add_legacy),
        web.post(V3 + "/account/3pid/add", add),
        web.post(V3 + "/account/3pid/bind", bind),
        web.post(V3 + "/account/3pid/delete", remove),
        web.post(V3 + "/account/3pid/unbind", remove),
    ]
    for purpose in TOKEN_PURPOSES:
        for medium in MEDIA:
            routes.append(web.post(f"{V3}/{purpose}/{medium}/requestToken", request_token(purpose, medium)))
        routes.append(web.get(SUBMIT_PATHS[purpose], submit_page(purpose)))
    routes.append(web.post(SUBMIT_PATHS["account/password"], submit_page("account/password")))
    app.router.add_routes(routes)
