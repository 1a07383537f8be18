"""The consent page, at Synapse's path, when `registration.terms` is set (see
homeserver/handlers/consent.py for blocking events and the server notice):

    GET  /_matrix/consent?u=<localpart or user ID>&h=<mac>   the policies, and a button
    POST /_matrix/consent   (u, h and the version shown: form fields or the query)  accepts

No sign-in: `h`, an HMAC of the user ID that only this server can make, is the credential,
given in the `consent_uri` of the 403 M_CONSENT_NOT_GIVEN and in the server notice. Without
it, or with a wrong one, the page is a 403. The GET changes nothing; the POST records
`consent_version` (the current `registration.terms.version`) and `consent_ts` for the user,
and their events go through at once. A form from before the version changed is refused and
the new version shown. The policies are listed by name with their links, in the browser's
language (Accept-Language) where the operator has it, else English, else the first one.
Everything shown is escaped.
"""

from __future__ import annotations

import logging
from html import escape

from aiohttp import web

from homeserver.api.oauth import terms_links
from homeserver.api.pages import error_page, page
from homeserver.api.server_notices import get_server_notices
from homeserver.config import TermsConfig
from homeserver.handlers.consent import (
    CONSENT_PATH,
    ConsentHandler,
    ConsentNotices,
    guard_remote_membership,
)
from homeserver.server import HomeServer

log = logging.getLogger(__name__)

TITLE = "Terms and conditions"
BAD_LINK = "This link is not valid: open it as it was sent to you."


def setup(app: web.Application, hs: HomeServer) -> None:
    terms = hs.config.registration.terms
    if terms is None:
        return
    consent = ConsentHandler(
        hs.config, hs.accounts, hs.events, hs.appservices, hs.clock, bytes(hs.signing_key)
    )
    if terms.block_events_until_consent:
        hs.creator.consent = consent.check_event
        if hs.rooms.remote_join is not None:  # federation is on (its area is set up before this)
            guard_remote_membership(hs.rooms, consent)
    if terms.server_notice is not None:
        if hs.config.server_notices.localpart is None:
            log.warning("registration.terms.server_notice is set, but server notices are not: none is sent")
        else:
            notices = ConsentNotices(
                consent,
                get_server_notices(app, hs),
            )
            hs.sync_extensions.append(notices)
            hs.sync.park_hooks.append(notices.on_request)  # sliding sync too
            hs.background.append(notices)

    def terms_page(
        request: web.Request, terms: TermsConfig, u: str, h: str, accepted: bool, error: str = ""
    ) -> web.Response:
        links = "".join(
            f"<li>{link}</li>" for link in terms_links(terms, request.headers.get("Accept-Language", ""))
        )
        problem = f'<p class="error">{escape(error)}</p>' if error else ""
        intro = (
            f"<p>You have accepted these policies of <b>{escape(hs.server_name)}</b>:</p>"
            if accepted
            else f"<p>To continue using <b>{escape(hs.server_name)}</b>, read and accept these policies:</p>"
        )
        form = (
            ""
            if accepted
            else f'<form method="post" action="{escape(CONSENT_PATH)}">'
            f'<input type="hidden" name="u" value="{escape(u)}">'
            f'<input type="hidden" name="h" value="{escape(h)}">'
            f'<input type="hidden" name="v" value="{escape(terms.version)}">'
            "<p><button>I accept</button></p></form>"
        )
        return page(TITLE, f"{problem}{intro}<ul>{links}</ul>{form}", status=400 if error else 200)

    def no_terms() -> web.Response:
        return error_page(TITLE, "This server has no terms to accept.", status=404)

    async def show(request: web.Request) -> web.Response:
        terms = consent.terms
        if terms is None:
            return no_terms()
        u, h = request.query.get("u", ""), request.query.get("h", "")
        user_id = consent.user_for_link(u, h)
        if user_id is None:
            return error_page(TITLE, BAD_LINK, status=403)
        state = await hs.accounts.get_consent(user_id)
        if state is None:
            return error_page(TITLE, "This account no longer exists.", status=404)
        return terms_page(request, terms, u, h, accepted=state[0] == terms.version)

    async def accept(request: web.Request) -> web.Response:
        terms = consent.terms
        if terms is None:
            return no_terms()
        form = await request.post()

        def field(name: str) -> str:
            value = form.get(name, request.query.get(name, ""))
            return value if isinstance(value, str) else ""

        u, h, shown = field("u"), field("h"), field("v")
        user_id = consent.user_for_link(u, h)
        if user_id is None:
            return error_page(TITLE, BAD_LINK, status=403)
        if shown != terms.version:
            # A page from before the policies changed: the new ones, to be accepted anew.
            return terms_page(
                request, terms, u, h, False, "The terms have changed: review them and accept again."
            )
        if not await consent.record(user_id, terms.version):
            return error_page(TITLE, "This account no longer exists.", status=404)
        return page(
            "Accepted",
            f"<p>Thank you: you have accepted the policies of <b>{escape(hs.server_name)}</b>. "
            "You may now close this window and return to your app.</p>",
        )

    app.router.add_routes([web.get(CONSENT_PATH, show), web.post(CONSENT_PATH, accept)])
