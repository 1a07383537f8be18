"""The unsubscribe link of notification emails (homeserver/handlers/email_notifs.py), at
Synapse's path:

GET  /_synapse/client/unsubscribe?access_token&app_id&pushkey   a page with a button
POST /_synapse/client/unsubscribe?access_token&app_id&pushkey   unsubscribes

No sign-in: the signed token names the user, app ID and pushkey. GET changes nothing (mail
scanners open links); the page's button POSTs, as does a mail client's one-click unsubscribe
(RFC 8058, body `List-Unsubscribe=One-Click`). The POST removes the user's email pushers of
that address (the named one, and any other for the same address, so no email comes to it),
and answers 200 even if they were gone already. A token that is not ours or not for this app
ID and pushkey is a 400 page, and nothing is removed. Neither the token nor the address is
logged.
"""

from __future__ import annotations

import logging
from html import escape

from aiohttp import web

from homeserver.api.pages import error_page, page
from homeserver.handlers.cs_services import services
from homeserver.handlers.email_notifs import UNSUBSCRIBE_PATH, UnsubscribeLinks
from homeserver.server import HomeServer

log = logging.getLogger(__name__)

TITLE = "Email notifications"


def setup(app: web.Application, hs: HomeServer) -> None:
    links = UnsubscribeLinks(bytes(hs.signing_key), hs.config.baseurl)

    def checked(request: web.Request) -> tuple[str, str, str] | None:
        """(user ID, app ID, pushkey) of a link whose token is good."""
        token, app_id, pushkey = (request.query.get(k) for k in ("access_token", "app_id", "pushkey"))
        if not token or not app_id or not pushkey:
            return None
        user_id = links.user_for(token, app_id, pushkey)
        return None if user_id is None else (user_id, app_id, pushkey)

    def invalid() -> web.Response:
        return error_page(TITLE, "This unsubscribe link is not valid: open it as it was sent in the email.")

    async def confirm(request: web.Request) -> web.Response:
        found = checked(request)
        if found is None:
            return invalid()
        _, _, pushkey = found
        # The form posts to this same URL (the token stays in its query).
        return page(
            TITLE,
            f"<p>Stop sending notification emails from {escape(hs.server_name)} to "
            f"<b>{escape(pushkey)}</b>?</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>',
        )

    async def unsubscribe(request: web.Request) -> web.Response:
        found = checked(request)
        if found is None:
            return invalid()
        user_id, _, pushkey = found
        # Every email pusher of the address (the named one too): the emails are sent once per
        # address, whichever pushers ask for them.
        await services(app, hs).push.remove_email_pushers(user_id, pushkey)
        log.info("%s unsubscribed from notification emails through a link", user_id)
        return page(
            TITLE,
            f"<p>You have been unsubscribed: {escape(hs.server_name)} sends no more notification "
            f"emails to <b>{escape(pushkey)}</b>. You can turn them on again in your client's "
            "notification settings.</p>",
        )

    app.router.add_routes([web.get(UNSUBSCRIBE_PATH, confirm), web.post(UNSUBSCRIBE_PATH, unsubscribe)])
