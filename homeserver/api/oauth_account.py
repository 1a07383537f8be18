"""The OAuth 2.0 API's account pages (`account_management_uri`, `/_sotto/account`): clients
signed in through OAuth cannot do user-interactive auth, so they send the user here, with an
`action`, for what needs the password:

- `org.matrix.cross_signing_reset`: approve the client's reset of the cross-signing keys (the
  `m.oauth` UIA stage; one reset within ten minutes);
- `org.matrix.devices_list`, `org.matrix.device_view` and `org.matrix.device_delete` (with
  `device_id`), and their older `session_*` names: the signed-in devices, and signing one out;
- `org.matrix.account_deactivate`: closing the account;
- `sotto.password_change` (linked from the account page; the spec names no action for it):
  a new password, for users whose app signs in through OAuth and so cannot change it.

The user signs in with the password on each visit, or through an identity provider (which
sends the browser back with a single-use login token). The device list then carries a signed
ticket (ten minutes) in its forms instead of a cookie, so no other site can post them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from html import escape
from typing import Any

from aiohttp import web

from homeserver.api.devices import get_device_handler
from homeserver.api.pages import page
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.deactivation import Deactivator
from homeserver.handlers.oauth import ACCOUNT_PATH, CROSS_SIGNING_RESET, DEACTIVATE, OAuthServer
from homeserver.handlers.registration import validate_password
from homeserver.handlers.signed_payloads import PayloadSigner
from homeserver.server import HomeServer

log = logging.getLogger(__name__)

DEVICE_ACTIONS = (
    "org.matrix.devices_list",
    "org.matrix.device_view",
    "org.matrix.device_delete",
    "org.matrix.sessions_list",
    "org.matrix.session_view",
    "org.matrix.session_end",
)
DEVICES_URL = f"{ACCOUNT_PATH}?action=org.matrix.devices_list"
PASSWORD_CHANGE = "sotto.password_change"
PASSWORD_URL = f"{ACCOUNT_PATH}?action={PASSWORD_CHANGE}"
_NEW_PASSWORD_FIELDS = (
    '<label for="new_password">New password</label>'
    '<input id="new_password" name="new_password" type="password" autocomplete="new-password" required>'
    '<label for="new_password2">New password again</label>'
    '<input id="new_password2" name="new_password2" type="password" autocomplete="new-password" required>'
    '<p><label><input type="checkbox" name="sign_out" value="1" style="width:auto"> '
    "Also sign out every device</label></p>"
)
TICKET_LIFETIME_MS = 10 * 60 * 1000

SignIn = Callable[[web.Request, Any], Awaitable[str]]


def _problem(error: str) -> str:
    return f'<p class="error">{escape(error)}</p>' if error else ""


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "never"


def setup(
    app: web.Application,
    hs: HomeServer,
    oauth: OAuthServer,
    sign_in: SignIn,
    fields: Callable[[web.Request], str],
) -> None:
    """`sign_in` checks a form's username and password, or the login token of a user back
    from single sign-on (rate-limited); `fields` gives a page's sign-in inputs."""
    devices = get_device_handler(app, hs)
    deactivator = Deactivator(hs.accounts, devices, hs.auth, hs.events, hs.creator)
    tickets = PayloadSigner(bytes(hs.signing_key), "account page")
    server_name = hs.config.server_name

    def sign_in_page(
        request: web.Request, title: str, why: str, button: str, error: str = "", status: int = 200
    ) -> web.Response:
        body = (
            f'{why}{_problem(error)}<form method="post" action="{escape(request.path_qs)}">'
            f"{fields(request)}<p><button>{escape(button)}</button></p></form>"
        )
        return page(title, body, status)

    async def devices_page(user_id: str, focus: str | None, note: str = "") -> web.Response:
        ticket = tickets.encode({"user_id": user_id, "expires_ms": hs.clock.time_ms() + TICKET_LIFETIME_MS})
        rows = ""
        for d in sorted(await hs.accounts.list_devices(user_id), key=lambda d: -(d.last_seen_ts or 0)):
            mark = ' style="background:#ffd"' if d.device_id == focus else ""
            rows += (
                f"<tr{mark}><td>{escape(d.display_name or '')}</td>"
                f"<td><code>{escape(d.device_id)}</code></td>"
                f'<td>{_when(d.last_seen_ts)}</td><td><form method="post" action="{ACCOUNT_PATH}">'
                f'<input type="hidden" name="ticket" value="{escape(ticket)}">'
                f'<input type="hidden" name="device_id" value="{escape(d.device_id)}">'
                '<button class="secondary" name="op" value="sign_out">Sign out</button></form></td></tr>'
            )
        body = (
            f"<p>Signed in as <b>{escape(user_id)}</b>.</p>{note}"
            "<table><tr><th>Name</th><th>Device</th><th>Last seen</th><th></th></tr>"
            f"{rows or '<tr><td colspan=4>No devices.</td></tr>'}</table>"
        )
        return page("Your devices", body)

    async def account(request: web.Request) -> web.Response:
        action = request.query.get("action")
        if action == CROSS_SIGNING_RESET:
            return await reset(request)
        if action == DEACTIVATE:
            return await deactivate(request)
        if action == PASSWORD_CHANGE:
            return await change_password(request)
        if action not in DEVICE_ACTIONS and request.method == "GET":
            return page(
                f"Your account on {server_name}",
                f'<p><a class="button" href="{DEVICES_URL}">Your devices</a></p>'
                f'<p><a class="button" href="{PASSWORD_URL}">Change your password</a></p>'
                "<p>Manage your profile and rooms from your Matrix app.</p>",
            )
        focus = request.query.get("device_id")
        why = "<p>Sign in to see the devices signed in to your account, and sign them out.</p>"
        if request.method == "GET":
            return sign_in_page(request, "Your devices", why, "Sign in")
        form = await request.post()
        if "ticket" in form:
            return await sign_out(form)
        try:
            user_id = await sign_in(request, form)
        except MatrixError as e:
            return sign_in_page(request, "Your devices", why, "Sign in", e.message, e.status)
        return await devices_page(user_id, focus)

    async def sign_out(form: Any) -> web.Response:
        ticket = tickets.decode(str(form.get("ticket")))
        if (
            ticket is None
            or not isinstance(ticket.get("user_id"), str)
            or ticket.get("expires_ms", 0) <= hs.clock.time_ms()
        ):
            return page(
                "Sign in again",
                f'<p>This page has expired. <a href="{DEVICES_URL}">Sign in again</a>.</p>',
                403,
            )
        user_id, device_id = ticket["user_id"], str(form.get("device_id", ""))
        gone = await devices.delete_devices(user_id, [device_id])
        note = (
            f"<p>Signed out <code>{escape(device_id)}</code>.</p>"
            if gone
            else "<p>That device was already signed out.</p>"
        )
        return await devices_page(user_id, None, note)

    async def reset(request: web.Request) -> web.Response:
        title = "Reset your encryption identity?"
        why = (
            "<p>An app signed in to your account wants to <b>reset your encryption identity</b> "
            "(your cross-signing keys). Devices you verified will have to be verified again.</p>"
            "<p>If you did not ask for this, close this page: someone else may be using your account.</p>"
        )
        if request.method == "GET":
            return sign_in_page(request, title, why, "Allow the reset")
        try:
            user_id = await sign_in(request, await request.post())
        except MatrixError as e:
            return sign_in_page(request, title, why, "Allow the reset", e.message, e.status)
        await oauth.allow_cross_signing_reset(user_id)
        return page(
            "Reset allowed",
            "<p>Go back to your app to finish: it may reset your encryption identity "
            "in the next ten minutes.</p>",
        )

    async def change_password(request: web.Request) -> web.Response:
        title = "Change your password"
        why = "<p>Sign in, and choose a new password.</p>"
        if request.method == "GET":
            return sign_in_page(request, title, why + _NEW_PASSWORD_FIELDS, "Change my password")
        form = await request.post()
        try:
            # The new password first: signing in may use up a single sign-on's login token.
            new = str(form.get("new_password", ""))
            if new != form.get("new_password2"):
                raise MatrixError(400, Codes.INVALID_PARAM, "The two new passwords differ")
            validate_password(new)
            user_id = await sign_in(request, form)
        except MatrixError as e:
            return sign_in_page(
                request, title, why + _NEW_PASSWORD_FIELDS, "Change my password", e.message, e.status
            )
        await hs.accounts.set_password_hash(user_id, await hs.passwords.hash(new))
        log.info("password changed for %s on the account page", user_id)
        note = "You may close this page."
        if form.get("sign_out") == "1":
            await devices.delete_other_devices(user_id, None)
            note = "Every device was signed out: sign in again with the new password."
        return page("Password changed", f"<p>The password of {escape(user_id)} is changed. {note}</p>")

    async def deactivate(request: web.Request) -> web.Response:
        title = "Deactivate your account?"
        why = (
            f"<p>Deactivating your account on <b>{escape(server_name)}</b> signs out every device, "
            "takes you out of your rooms and cannot be undone: no one can use the account, or its "
            "name, again.</p>"
        )
        erase = (
            '<p><label><input type="checkbox" name="erase" value="1" style="width:auto"> '
            "Also forget my name and picture, and hide my messages from people who join "
            "rooms after they were sent</label></p>"
        )
        if request.method == "GET":
            return sign_in_page(request, title, why + erase, "Deactivate my account")
        form = await request.post()
        try:
            user_id = await sign_in(request, form)
        except MatrixError as e:
            return sign_in_page(request, title, why + erase, "Deactivate my account", e.message, e.status)
        await deactivator.deactivate(user_id, erase=form.get("erase") == "1")
        return page(
            "Account deactivated", f"<p>{escape(user_id)} is deactivated. You may close this page.</p>"
        )

    app.router.add_routes([web.get(ACCOUNT_PATH, account), web.post(ACCOUNT_PATH, account)])
