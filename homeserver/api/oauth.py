"""The OAuth 2.0 API's endpoints (homeserver/handlers/oauth.py does the work), when
`oauth.enabled`:

    GET  /_matrix/client/v1/auth_metadata      the server metadata (also the MSC2965 path)
    POST /_sotto/oauth2/register               dynamic client registration (JSON)
    GET  /_sotto/oauth2/authorize              the sign-in page of the authorisation code grant
    POST /_sotto/oauth2/authorize              the user signs in (or refuses)
    POST /_sotto/oauth2/token                  codes, refresh tokens and device codes for tokens
    POST /_sotto/oauth2/revoke                 ends a session (RFC 7009)
    POST /_sotto/oauth2/device                 starts a device authorisation (RFC 8628)
    GET/POST /_sotto/oauth2/link               where the user approves a device's code
    GET/POST /_sotto/account                   account pages (api/oauth_account.py): devices, resets

The token, revocation and device endpoints take `application/x-www-form-urlencoded` bodies
and answer OAuth errors (`{"error", "error_description"}`), not Matrix ones.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from homeserver.api import oauth_account
from homeserver.api.devices import get_device_handler
from homeserver.api.http import V1, json_response
from homeserver.api.pages import NO_STORE, error_page, page
from homeserver.api.register import client_address, get_uia
from homeserver.config import TermsConfig
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.oauth import (
    AUTHORIZE_PATH,
    DEVICE_PATH,
    LINK_PATH,
    REGISTER_PATH,
    REVOKE_PATH,
    TOKEN_PATH,
    AuthorizationRequest,
    OAuthServer,
    RedirectableError,
)
from homeserver.handlers.oauth_clients import OAuthError
from homeserver.handlers.registration import LoginHandler, RegistrationHandler, login_limiter
from homeserver.handlers.sso import sso_login_flow
from homeserver.handlers.uia import check_password_login, qualify_user_id
from homeserver.server import HomeServer
from homeserver.storage.oauth import OAuthStore
from homeserver.storage.openid import login_token_store

OAUTH_KEY = web.AppKey("oauth", OAuthServer)
V3_PATH = "/_matrix/client/v3"
UNSTABLE_METADATA = "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"
_TOKEN_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def get_oauth(app: web.Application, hs: HomeServer) -> OAuthServer | None:
    """The app's OAuth 2.0 server when `oauth.enabled` (None otherwise), made on first use."""
    if not hs.config.oauth.enabled:
        return None
    if OAUTH_KEY not in app:
        devices = get_device_handler(app, hs)
        app[OAUTH_KEY] = OAuthServer(hs.config, OAuthStore(hs.db), hs.accounts, hs.auth, devices)
    return app[OAUTH_KEY]


def _oauth_error(e: OAuthError) -> web.Response:
    resp = json_response(e.to_json(), status=e.status)
    resp.headers.update(_TOKEN_HEADERS)
    return resp


def _redirect(url: str) -> web.Response:
    return web.Response(status=302, headers={**NO_STORE, "Location": url})


def _sign_in_fields(new_password: bool = False, username: str = "") -> str:
    completion = "new-password" if new_password else "current-password"
    return (
        '<label for="username">Username</label>'
        f'<input id="username" name="username" autocomplete="username" value="{escape(username)}" required>'
        '<label for="password">Password</label>'
        f'<input id="password" name="password" type="password" autocomplete="{completion}" required>'
    )


_TOKEN_FIELD = '<label for="token">Registration token</label><input id="token" name="token" required>'


def terms_links(terms: TermsConfig, accept_language: str) -> list[str]:
    """A link to each of the server's policies (HTML), in the reader's language
    (Accept-Language) if the operator has it, else English, else the first one given."""
    tags = [tag.split(";")[0].strip().lower() for tag in accept_language.split(",")]
    # Each tag, then its language alone ("fr-ch", "fr"), in the reader's order.
    wanted = [name for tag in tags for name in (tag, tag.split("-")[0])] + ["en"]
    links = []
    for docs in terms.policies.values():
        language = next((w for w in wanted if w in docs), next(iter(docs)))
        doc = docs[language]
        links.append(
            f'<a href="{escape(doc["url"])}" target="_blank" rel="noopener">{escape(doc["name"])}</a>'
        )
    return links


def _terms_field(terms: TermsConfig, accept_language: str) -> str:
    """The server's policies (`terms_links`) and the box that accepts them, with the version
    shown (a registration is refused if the server's changed meanwhile)."""
    return (
        '<p><input id="accept_terms" name="accept_terms" type="checkbox" value="1" '
        'style="width:auto" required> '
        '<label for="accept_terms" style="display:inline">'
        f"I accept {', '.join(terms_links(terms, accept_language))}</label></p>"
        f'<input type="hidden" name="terms_version" value="{escape(terms.version)}">'
    )


def setup(app: web.Application, hs: HomeServer) -> None:
    oauth = get_oauth(app, hs)
    if oauth is None:
        return
    get_uia(app, hs).oauth = oauth
    limiter = login_limiter(hs.config, hs.clock)
    # Registrations and device grants each add a row: bounded per client address too.
    row_limiter = login_limiter(hs.config, hs.clock)
    server_name = hs.config.server_name
    # The page's form has no email stage: with `require_email`, accounts come from Matrix clients.
    registration_open = hs.config.registration.enabled and not hs.config.registration.require_email
    registration = RegistrationHandler(
        hs.config, hs.accounts, hs.passwords, hs.auth, get_uia(app, hs), hs.clock, hs.appservices
    )
    logins = LoginHandler(hs.config, hs.accounts, hs.passwords, hs.auth, hs.clock, login_token_store(hs.db))
    providers = hs.config.oidc_providers
    identity_providers = sso_login_flow(providers)["identity_providers"] if providers else []

    async def sign_in(request: web.Request, form: Any) -> str:
        """The user the form's username and password name, or, back from single sign-on,
        the login token in the page's URL (single use) names (MatrixError otherwise)."""
        limiter.check(client_address(request))
        if "loginToken" in request.query:
            user_id = await logins.consume_login_token(request.query["loginToken"])
        else:
            claimed = qualify_user_id(str(form.get("username", "")).strip(), server_name)
            user_id = await check_password_login(
                hs.accounts, hs.passwords, server_name, claimed, form.get("password")
            )
        moderation = await hs.accounts.get_moderation(user_id)
        if moderation is not None and moderation["locked"]:
            # After the password, as at /login: the lock is not told to whoever names the account.
            raise MatrixError(401, Codes.USER_LOCKED, "This account has been locked")
        return user_id

    def sso_links(request: web.Request) -> str:
        """A link per identity provider, back to this page once signed in there."""
        links = ""
        for provider in identity_providers:
            back = urlencode({"redirectUrl": hs.config.baseurl + request.path_qs})
            sso = f"{V3_PATH}/login/sso/redirect/{quote(provider['id'], safe='')}?{back}"
            links += (
                f'<p><a class="button" href="{escape(sso)}">Sign in with {escape(provider["name"])}</a></p>'
            )
        return links

    def sign_in_fields(request: web.Request) -> str:
        """The sign-in part of a page's form: the password, or any identity provider; once
        back from the provider, nothing more (the login token in the URL is the proof)."""
        if "loginToken" in request.query:
            return "<p>Signed in through your identity provider.</p>"
        return _sign_in_fields() + sso_links(request)

    async def metadata(request: web.Request) -> web.Response:
        return json_response(oauth.metadata())

    async def register(request: web.Request) -> web.Response:
        row_limiter.check(client_address(request))
        try:
            body = await request.json()
        except ValueError:
            body = None
        try:
            return json_response(await oauth.register_client(body), status=201)
        except OAuthError as e:
            return _oauth_error(e)

    def authorize_page(
        req: AuthorizationRequest, request: web.Request, error: str = "", status: int = 200
    ) -> web.Response:
        name, site = escape(req.client_name()), escape(req.client["client_uri"])
        problem = f'<p class="error">{escape(error)}</p>' if error else ""
        intro = (
            f'<p><b>{name}</b> (<a href="{site}">{site}</a>) wants to sign in to your account on '
            f"<b>{escape(server_name)}</b> as a new device, with full access to your account.</p>{problem}"
        )
        form = f'<form method="post" action="{escape(request.path_qs)}">'
        buttons = (
            '<p><button name="action" value="allow">{}</button> '
            '<button class="secondary" name="action" value="deny" formnovalidate>Cancel</button></p></form>'
        )
        here = dict(request.query)
        if "loginToken" in here:
            # Back from single sign-on (api/sso.py sends the browser here): only the consent.
            return page(f"Continue to {req.client_name()}?", intro + form + buttons.format("Allow"), status)
        # New accounts made on the page accept these with a ticked box, as in a client's
        # m.login.terms (as configured now: the version shown goes with the form).
        terms = hs.config.registration.terms
        if req.prompt == "create" and registration_open:
            sign_in_link = escape(
                f"{AUTHORIZE_PATH}?{urlencode({k: v for k, v in here.items() if k != 'prompt'})}"
            )
            body = (
                intro
                + form
                + _sign_in_fields(new_password=True)
                + (_TOKEN_FIELD if hs.config.registration.requires_token else "")
                + (_terms_field(terms, request.headers.get("Accept-Language", "")) if terms else "")
                + '<input type="hidden" name="register" value="1">'
                + buttons.format("Create the account and allow")
                + f'<p>Have an account? <a href="{sign_in_link}">Sign in</a></p>'
            )
            return page(f"Create an account on {server_name}", body, status)
        extra = sso_links(request)
        if registration_open:
            create = escape(f"{AUTHORIZE_PATH}?{urlencode({**here, 'prompt': 'create'})}")
            extra += f'<p>No account yet? <a href="{create}">Create one</a></p>'
        # Clients may name the account (`login_hint=mxid:@alice:example.org`, as Element X does).
        hint = request.query.get("login_hint", "")
        username = hint.removeprefix("mxid:") if hint.startswith("mxid:") else ""
        fields = _sign_in_fields(username=username)
        body = intro + form + fields + buttons.format("Sign in and allow") + extra
        body += "<p>Continue only if you started this sign-in yourself.</p>"
        return page(f"Sign in to {server_name}", body, status)

    async def authorize(request: web.Request) -> web.Response:
        try:
            req = await oauth.authorization_request(dict(request.query))
        except OAuthError as e:
            return error_page("This sign-in cannot continue", e.description)
        except RedirectableError as e:
            return _redirect(e.url)
        if request.method == "GET":
            return authorize_page(req, request)
        form = await request.post()
        if form.get("action") == "deny":
            return _redirect(
                req.callback({"error": "access_denied", "error_description": "The user refused"})
            )
        try:
            if form.get("register") and req.prompt == "create":
                user_id = await registration.register_from_page(
                    str(form.get("username", "")).strip(),
                    str(form.get("password", "")),
                    str(form.get("token", "")) or None,
                    client_address(request),
                    accepted_terms=form.get("accept_terms") == "1",
                    terms_version=str(form.get("terms_version", "")) or None,
                )
            else:
                user_id = await sign_in(request, form)
        except MatrixError as e:
            return authorize_page(req, request, e.message, status=e.status)
        return _redirect(await oauth.issue_code(req, user_id))

    async def form_endpoint(request: web.Request, work: Any) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        try:
            out = await work(form)
        except OAuthError as e:
            return _oauth_error(e)
        resp = json_response(out if out is not None else {})
        resp.headers.update(_TOKEN_HEADERS)
        return resp

    async def token(request: web.Request) -> web.Response:
        return await form_endpoint(request, oauth.token)

    async def revoke(request: web.Request) -> web.Response:
        return await form_endpoint(request, oauth.revoke)

    async def device(request: web.Request) -> web.Response:
        row_limiter.check(client_address(request))
        return await form_endpoint(request, oauth.start_device_grant)

    def link_page(request: web.Request, user_code: str, error: str = "", status: int = 200) -> web.Response:
        problem = f'<p class="error">{escape(error)}</p>' if error else ""
        body = (
            f"<p>A device is asking to sign in to your account on <b>{escape(server_name)}</b>. "
            "Check that the code below is the one it shows.</p>"
            f'{problem}<form method="post" action="{escape(request.path_qs)}">'
            '<label for="user_code">Code</label>'
            f'<input id="user_code" name="user_code" value="{escape(user_code)}" required>'
            f"{sign_in_fields(request)}"
            '<p><button name="action" value="allow">Sign in and allow</button> '
            '<button class="secondary" name="action" value="deny">Refuse</button></p></form>'
        )
        return page("Sign in a device", body, status=status)

    async def link(request: web.Request) -> web.Response:
        if request.method == "GET":
            return link_page(request, request.query.get("user_code", ""))
        form = await request.post()
        user_code = str(form.get("user_code", ""))
        pending = await oauth.pending_device_grant(user_code)
        if pending is None:
            return link_page(
                request, user_code, "This code is unknown or expired. Start again on the device.", 400
            )
        try:
            user_id = await sign_in(request, form)
        except MatrixError as e:
            return link_page(request, user_code, e.message, e.status)
        allow = form.get("action") != "deny"
        if not await oauth.decide_device_grant(user_code, user_id if allow else None):
            return link_page(request, user_code, "This code was already used.", 400)
        if not allow:
            return page("Refused", "<p>The device was not signed in. You may close this page.</p>")
        client_name = escape(str(pending[1].get("client_name") or pending[1]["client_uri"]))
        return page(
            "Device signed in", f"<p><b>{client_name}</b> is now signed in. You may close this page.</p>"
        )

    oauth_account.setup(app, hs, oauth, sign_in, sign_in_fields)

    app.router.add_routes(
        [
            web.get(V1 + "/auth_metadata", metadata),
            web.get(UNSTABLE_METADATA, metadata),
            web.post(REGISTER_PATH, register),
            web.get(AUTHORIZE_PATH, authorize),
            web.post(AUTHORIZE_PATH, authorize),
            web.post(TOKEN_PATH, token),
            web.post(REVOKE_PATH, revoke),
            web.post(DEVICE_PATH, device),
            web.get(LINK_PATH, link),
            web.post(LINK_PATH, link),
        ]
    )
