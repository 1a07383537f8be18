"""The fallback page of the `m.login.terms` stage (the spec's UIA fallback), for clients that
cannot show the policies themselves, when `registration.terms` is set:

    GET  /_matrix/client/v3/auth/m.login.terms/fallback/web?session=  the policies, and a button
    POST /_matrix/client/v3/auth/m.login.terms/fallback/web           accepts them for the session

The registration session's ID (unguessable, given only to the client that started it) is the
credential, as in the single sign-on fallback (api/sso.py): the form carries it, and the
version of the policies shown, so a form from before the server's changed is refused and the
new version shown. The GET changes nothing. Once accepted, the stage is done in the session
(homeserver/handlers/uia.py) and the page tells the client (`window.onAuthDone`, or the
`authDone` message to its opener), which then sends `auth` with the session only.
Errors are HTML pages (400), for the person at the browser.
"""

from __future__ import annotations

from html import escape

from aiohttp import web

from homeserver.api.http import V3
from homeserver.api.oauth import terms_links
from homeserver.api.pages import error_page, page
from homeserver.api.register import get_uia
from homeserver.api.sso import DONE_SCRIPT
from homeserver.config import TermsConfig
from homeserver.handlers.registration import RegistrationHandler
from homeserver.handlers.uia import OPERATION_REGISTER, StageFailed
from homeserver.server import HomeServer

PATH = V3 + "/auth/m.login.terms/fallback/web"
TITLE = "Terms and conditions"
EXPIRED = "This registration has expired. Start again from your app."


def setup(app: web.Application, hs: HomeServer) -> None:
    if hs.config.registration.terms is None:
        return
    uia = get_uia(app, hs)
    registration = RegistrationHandler(
        hs.config, hs.accounts, hs.passwords, hs.auth, uia, hs.clock, hs.appservices
    )

    def terms_page(
        request: web.Request, terms: TermsConfig, session_id: str, error: str = ""
    ) -> web.Response:
        links = "".join(
            f"<li>{link}</li>" for link in terms_links(terms, request.headers.get("Accept-Language", ""))
        )
        problem = f'<p class="error">{escape(error)}</p>' if error else ""
        body = (
            f"{problem}<p>To create your account on <b>{escape(hs.server_name)}</b>, read and accept "
            f"these policies:</p><ul>{links}</ul>"
            f'<form method="post" action="{escape(request.path)}">'
            f'<input type="hidden" name="session" value="{escape(session_id)}">'
            f'<input type="hidden" name="terms_version" value="{escape(terms.version)}">'
            "<p><button>I accept</button></p></form>"
        )
        return page(TITLE, body, status=400 if error else 200)

    async def show(request: web.Request) -> web.Response:
        terms = registration.terms
        session_id = request.query.get("session", "")
        if terms is None or not session_id:
            return error_page(TITLE, EXPIRED)
        state = await uia.terms_stage(session_id, OPERATION_REGISTER, registration.flows)
        if state is None:
            return error_page(TITLE, EXPIRED)
        if not state:
            return error_page(TITLE, "Complete the other steps in your app first.")
        return terms_page(request, terms, session_id)

    async def accept(request: web.Request) -> web.Response:
        form = await request.post()
        terms = registration.terms
        session_id = str(form.get("session", ""))
        if terms is None or not session_id:
            return error_page(TITLE, EXPIRED)
        shown = str(form.get("terms_version", ""))
        if shown != terms.version and await uia.terms_stage(
            session_id, OPERATION_REGISTER, registration.flows
        ):
            # A page from before the policies changed: the new ones, to be accepted anew.
            return terms_page(
                request, terms, session_id, "The terms have changed: review them and accept again."
            )
        try:
            await uia.complete_terms(
                session_id, OPERATION_REGISTER, registration.flows, registration.stage_params() or {}, shown
            )
        except StageFailed as e:
            return error_page(TITLE, e.message)
        return page(
            "Accepted",
            "<p>Thank you. You may now close this window and return to your app.</p>" + DONE_SCRIPT,
        )

    app.router.add_routes([web.get(PATH, show), web.post(PATH, accept)])
