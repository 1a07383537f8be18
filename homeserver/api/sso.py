"""Single sign-on pages (homeserver/handlers/sso.py does the work):

    GET /_matrix/client/v3/login/sso/redirect?redirectUrl=         to the provider (or a choice)
    GET /_matrix/client/v3/login/sso/redirect/{idpId}?redirectUrl= to that provider
    GET /_matrix/client/v3/auth/m.login.sso/fallback/web?session=  UIA: what is asked, then the provider
    GET /_synapse/client/oidc/callback                             the provider sends the browser back

Errors are HTML pages for the person at the browser, not JSON, except a missing or bad
`redirectUrl`, which the client caused.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from homeserver.api.http import V3
from homeserver.api.pages import NO_STORE, error_page, page
from homeserver.api.register import get_uia
from homeserver.handlers.oauth import SSO_RETURN_PAGES
from homeserver.handlers.oidc import OidcProvider
from homeserver.handlers.registration import LoginHandler
from homeserver.handlers.sso import (
    CALLBACK_PATH,
    COOKIE,
    SESSION_TTL_MS,
    LoginDone,
    SsoError,
    SsoHandler,
    check_redirect_url,
)
from homeserver.server import HomeServer
from homeserver.storage.openid import login_token_store

SSO_KEY = web.AppKey("sso", SsoHandler)

# The fallback completion of the spec's UIA fallback: tell the opener it may retry (also
# the m.login.terms fallback's, api/terms_fallback.py).
DONE_SCRIPT = """<script>
if (window.onAuthDone) { window.onAuthDone(); }
else if (window.opener && window.opener.postMessage) { window.opener.postMessage("authDone", "*"); }
</script>"""


def _error(message: str) -> web.Response:
    return error_page("Sign-in failed", message)


def setup(app: web.Application, hs: HomeServer) -> None:
    if not hs.config.oidc_providers:
        return
    uia = get_uia(app, hs)
    uia.sso_enabled = True
    logins = LoginHandler(hs.config, hs.accounts, hs.passwords, hs.auth, hs.clock, login_token_store(hs.db))
    sso = SsoHandler(hs, uia, logins)
    app[SSO_KEY] = sso
    secure = hs.config.baseurl.startswith("https:")
    own_pages = tuple(f"{hs.config.baseurl}{path}?" for path in SSO_RETURN_PAGES)

    async def close(_app: web.Application) -> None:
        await sso.close()

    app.on_cleanup.append(close)

    def to_provider(url: str, cookie: str) -> web.Response:
        resp = web.Response(status=302, headers={**NO_STORE, "Location": url})
        resp.set_cookie(
            COOKIE,
            cookie,
            max_age=SESSION_TTL_MS // 1000,
            path=CALLBACK_PATH,
            httponly=True,
            secure=secure,
            samesite="Lax",  # sent on the provider's top-level redirect back
        )
        return resp

    async def begin(provider: OidcProvider, **where: str) -> web.Response:
        """To the provider, with the cookie of this sign-in (`where`: see SsoHandler.start)."""
        try:
            url, cookie = await sso.start(provider, **where)
        except SsoError as e:
            return _error(str(e))
        return to_provider(url, cookie)

    async def redirect(request: web.Request) -> web.StreamResponse:
        redirect_url = check_redirect_url(request.query.get("redirectUrl"))
        idp_id = request.match_info.get("idp_id")
        provider = sso.provider(idp_id)
        if provider is None:
            if idp_id is not None:
                return _error("This server has no such identity provider.")
            links = "".join(
                f'<p><a class="button" href="{escape(_idp_path(request, p, redirect_url))}">'
                f"{escape(sso.providers[p].config.idp_name)}</a></p>"
                for p in sso.providers
            )
            return page("Choose how to sign in", links)
        return await begin(provider, redirect_url=redirect_url)

    async def uia_fallback(request: web.Request) -> web.StreamResponse:
        session_id = request.query.get("session", "")
        pending = await uia.pending(session_id) if session_id else None
        if pending is None or pending[1] is None:
            return _error("This confirmation has expired. Try again from your app.")
        operation = pending[0]
        provider = sso.provider(request.query.get("idp"))
        if provider is None or "idp" not in request.query:
            links = "".join(
                f'<p><a class="button" href="?{escape(urlencode({"session": session_id, "idp": p}))}">'
                f"Confirm with {escape(sso.providers[p].config.idp_name)}</a></p>"
                for p in sso.providers
            )
            body = (
                f"<p>An app signed in to your account wants to <b>{escape(_describe(operation))}</b>. "
                "To allow it, sign in again.</p><p>If you did not ask for this, close this page: "
                "someone else may be using your account.</p>" + links
            )
            return page("Confirm your identity", body)
        return await begin(provider, ui_session=session_id)

    async def callback(request: web.Request) -> web.StreamResponse:
        try:
            done = await sso.callback(dict(request.query), request.cookies.get(COOKIE))
        except SsoError as e:
            resp = _error(str(e))
        else:
            if isinstance(done, LoginDone) and done.redirect_url.startswith(own_pages):
                # A sign-in for a page of the OAuth 2.0 API (api/oauth.py, api/oauth_account.py),
                # which asks the consent itself.
                resp = web.Response(status=302, headers={**NO_STORE, "Location": done.redirect_url})
            elif isinstance(done, LoginDone):
                site = urlsplit(done.redirect_url).netloc or urlsplit(done.redirect_url).scheme
                body = (
                    f"<p>You are signed in as <b>{escape(done.user_id)}</b>.</p>"
                    f"<p><b>{escape(site)}</b> is asking for access to your account. Continue only "
                    "if you trust it, and if you started this sign-in yourself.</p>"
                    f'<p><a class="button" id="continue" href="{escape(done.redirect_url)}">'
                    f"Continue to {escape(site)}</a></p>"
                )
                resp = page("Continue to your app?", body)
            else:
                resp = page(
                    "Confirmed",
                    "<p>Thank you. You may now close this window and return to your app.</p>" + DONE_SCRIPT,
                )
        resp.del_cookie(COOKIE, path=CALLBACK_PATH)
        return resp

    app.router.add_routes(
        [
            web.get(V3 + "/login/sso/redirect", redirect),
            web.get(V3 + "/login/sso/redirect/{idp_id}", redirect),
            web.get(V3 + "/auth/m.login.sso/fallback/web", uia_fallback),
            web.get(CALLBACK_PATH, callback),
        ]
    )


def _idp_path(request: web.Request, idp_id: str, redirect_url: str) -> str:
    base = request.path.rstrip("/")
    return f"{base}/{quote(idp_id, safe='')}?{urlencode({'redirectUrl': redirect_url})}"


def _describe(operation: str) -> str:
    """Words for a UIA operation (its method and path)."""
    if operation.startswith("DELETE /devices/") or operation == "POST /delete_devices":
        return "sign out one of your devices"
    if "device_signing" in operation:
        return "reset your encryption identity"
    if "password" in operation:
        return "change your password"
    if "deactivate" in operation:
        return "deactivate your account"
    if "get_token" in operation:
        return "sign in on another device"
    return operation
