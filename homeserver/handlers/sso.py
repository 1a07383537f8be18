"""Single sign-on (the spec's `m.login.sso`) through OpenID Connect providers.

Login: `/login/sso/redirect[/{idpId}]?redirectUrl=` sends the browser to the provider with a
fresh state, nonce and PKCE verifier, kept in a cookie signed by this server (so any worker
can take the callback, and an unsolicited callback has no cookie to match). The callback
(`/_synapse/client/oidc/callback`, Synapse's path, so a provider's registration carries
over) checks the state, gets the user's claims (homeserver/handlers/oidc.py) and maps the
provider's subject to a local account: the one linked before (`user_external_ids`), else a
new one named from the claims. The user then confirms on a page naming the site that asked
before the browser goes there with a `loginToken` for `m.login.token` (the spec's guard
against a login token sent to a site the user did not choose).

User-interactive auth: `/auth/m.login.sso/fallback/web?session=` says what the client is
about to do and sends the user to the provider; the callback marks the session's
`m.login.sso` stage done if the provider's user is the session's user.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from homeserver.config import OidcProviderConfig
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.oidc import OidcError, OidcProvider, mapping, parse_template
from homeserver.handlers.registration import LoginHandler
from homeserver.handlers.signed_payloads import PayloadSigner
from homeserver.handlers.uia import UserInteractiveAuth
from homeserver.handlers.users import create_account, validate_localpart
from homeserver.server import HomeServer
from homeserver.storage.external_ids import ExternalIdStore

log = logging.getLogger(__name__)

CALLBACK_PATH = "/_synapse/client/oidc/callback"
COOKIE = "sotto_oidc_session"
# A sign-in at the provider must come back within this long.
SESSION_TTL_MS = 10 * 60 * 1000
# New accounts try "<localpart>", then "<localpart>1", "<localpart>2" ... up to this.
MAX_LOCALPART_ATTEMPTS = 1000
# Schemes a confirmation page will never link to (script in the page's origin).
_UNSAFE_SCHEMES = {"javascript", "data", "vbscript", "file"}


class SsoError(Exception):
    """A sign-in that cannot go on; the message is shown to the user."""


@dataclass(slots=True, frozen=True)
class SsoSession:
    idp_id: str
    state: str
    nonce: str
    verifier: str | None
    expires_ms: int
    # A login: where the client wants the browser back. UIA: the session to complete.
    redirect_url: str | None = None
    ui_session: str | None = None


@dataclass(slots=True, frozen=True)
class LoginDone:
    user_id: str
    redirect_url: str  # with the loginToken


@dataclass(slots=True, frozen=True)
class AuthDone:
    user_id: str


def check_redirect_url(url: str | None) -> str:
    """A client's redirectUrl: required, absolute, and no script."""
    if not url:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing redirectUrl")
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # e.g. an unclosed IPv6 bracket
        scheme = ""
    if not scheme or scheme in _UNSAFE_SCHEMES:
        raise MatrixError(400, Codes.INVALID_PARAM, "redirectUrl must be an absolute URL")
    return url


def with_login_token(url: str, token: str) -> str:
    """The redirect URL with `loginToken` set (any the client put there removed)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "loginToken"]
    query.append(("loginToken", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def localpart_from(value: str) -> str:
    """A localpart from a provider's name for the user, as Synapse maps one: lower case,
    then anything outside a-z 0-9 . _ = - / + as `=xx`, its UTF-8 bytes in hex (the
    appendices' "Mapping from other character sets")."""
    out: list[str] = []
    for ch in value.lower():
        if ("a" <= ch <= "z") or ("0" <= ch <= "9") or ch in "._=-/+":
            out.append(ch)
        else:
            out.extend(f"={b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def sso_login_flow(providers: list[OidcProviderConfig]) -> dict[str, Any]:
    """The `m.login.sso` flow of GET /login, naming each identity provider."""
    idps = []
    for c in providers:
        idp: dict[str, Any] = {"id": c.idp_id, "name": c.idp_name}
        if c.idp_icon:
            idp["icon"] = c.idp_icon
        if c.idp_brand:
            idp["brand"] = c.idp_brand
        idps.append(idp)
    return {"type": "m.login.sso", "identity_providers": idps}


class SsoHandler:
    def __init__(self, hs: HomeServer, uia: UserInteractiveAuth, logins: LoginHandler) -> None:
        self.hs = hs
        self.uia = uia
        self.logins = logins
        self.external_ids = ExternalIdStore(hs.db)
        callback = hs.config.baseurl + CALLBACK_PATH
        self.providers = {p.idp_id: OidcProvider(p, callback) for p in hs.config.oidc_providers}
        self._cookies = PayloadSigner(bytes(hs.signing_key), "sso cookie")

    async def close(self) -> None:
        for p in self.providers.values():
            await p.close()

    def provider(self, idp_id: str | None) -> OidcProvider | None:
        """The named provider, the only one when none is named, or None (unknown, or a
        choice to make)."""
        if idp_id is None:
            return next(iter(self.providers.values())) if len(self.providers) == 1 else None
        return self.providers.get(idp_id)

    # The cookie ------------------------------------------------------------------------------

    def encode_session(self, session: SsoSession) -> str:
        return self._cookies.encode(dataclasses.asdict(session))

    def decode_session(self, cookie: str | None) -> SsoSession | None:
        data = self._cookies.decode(cookie)
        try:
            session = SsoSession(**data) if data is not None else None
        except TypeError:
            return None
        return session if session is not None and session.expires_ms > self.hs.clock.time_ms() else None

    # Starting ---------------------------------------------------------------------------------

    async def start(
        self, provider: OidcProvider, *, redirect_url: str | None = None, ui_session: str | None = None
    ) -> tuple[str, str]:
        """(the provider's URL to send the browser to, the cookie to set)."""
        verifier = secrets.token_urlsafe(48) if await _pkce(provider) else None
        session = SsoSession(
            idp_id=provider.idp_id,
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=verifier,
            expires_ms=self.hs.clock.time_ms() + SESSION_TTL_MS,
            redirect_url=redirect_url,
            ui_session=ui_session,
        )
        try:
            url = await provider.authorization_url(session.state, session.nonce, verifier)
        except OidcError as e:
            raise SsoError(f"Signing in failed: {e}.") from None
        return url, self.encode_session(session)

    # The callback -----------------------------------------------------------------------------

    async def callback(self, query: dict[str, str], cookie: str | None) -> LoginDone | AuthDone:
        session = self.decode_session(cookie)
        if session is None or not _same(session.state, query.get("state", "")):
            raise SsoError("This sign-in was not started here, or took too long. Start again from your app.")
        if "error" in query:
            raise SsoError("The identity provider did not sign you in. Start again from your app.")
        provider = self.providers.get(session.idp_id)
        code = query.get("code")
        if provider is None or not code:
            raise SsoError("The identity provider's answer is incomplete. Start again from your app.")
        try:
            claims = await provider.claims(code, session.nonce, session.verifier)
        except OidcError as e:
            raise SsoError(f"Signing in failed: {e}.") from None
        subject = claims.get(str(mapping(provider.config).get("subject_claim", "sub")))
        if not isinstance(subject, str | int) or isinstance(subject, bool) or subject == "":
            raise SsoError("The identity provider did not say who you are.")
        subject = str(subject)
        if session.ui_session is not None:
            user_id = await self.external_ids.user_for(provider.idp_id, subject)
            if user_id is None or not await self.uia.complete_sso(session.ui_session, user_id):
                raise SsoError("You signed in as another user than the one the app asked about.")
            return AuthDone(user_id)
        assert session.redirect_url is not None
        user_id = await self.user_for(provider, subject, claims)
        user = await self.hs.accounts.get_user(user_id)
        if user is None or user["deactivated"]:
            raise SsoError("This account has been deactivated.")
        issued = await self.logins.issue_login_token(user_id)
        return LoginDone(user_id, with_login_token(session.redirect_url, issued["login_token"]))

    async def user_for(self, provider: OidcProvider, subject: str, claims: dict[str, Any]) -> str:
        """The local account of the provider's user, created and linked on first sign-in."""
        idp = provider.idp_id
        known = await self.external_ids.user_for(idp, subject)
        if known is not None:
            return known
        config = mapping(provider.config)
        claim, lower = parse_template(str(config.get("localpart_template", "{{ user.preferred_username }}")))
        wanted = claims.get(claim)
        if not isinstance(wanted, str) or not wanted:
            raise SsoError("The identity provider gave no user name to make your account with.")
        base = localpart_from(wanted.lower() if lower else wanted)
        display = None
        if "display_name_template" in config:
            name_claim, name_lower = parse_template(str(config["display_name_template"]))
            value = claims.get(name_claim)
            if isinstance(value, str) and value:
                display = value.lower() if name_lower else value
        server = self.hs.config.server_name
        for attempt in range(MAX_LOCALPART_ATTEMPTS):
            localpart = base if attempt == 0 else f"{base}{attempt}"
            try:
                user_id = validate_localpart(localpart, server)
            except MatrixError:
                raise SsoError("The identity provider's user name cannot be a Matrix user ID.") from None
            if self.hs.appservices and self.hs.appservices.user_claimed_by(user_id) is not None:
                continue
            existing = await self.hs.accounts.find_user_case_insensitive(user_id)
            if existing is not None:
                if provider.config.allow_existing_users and attempt == 0:
                    return await self.external_ids.link(idp, subject, existing)
                continue
            try:
                created = await create_account(
                    self.hs.accounts,
                    self.hs.passwords,
                    server,
                    localpart,
                    None,
                    self.hs.clock.time_ms(),
                    displayname=display,
                )
            except MatrixError as e:
                if e.errcode == Codes.USER_IN_USE:
                    continue  # taken meanwhile
                raise
            log.info("registered %s through single sign-on (%s)", created, idp)
            return await self.external_ids.link(idp, subject, created)
        raise SsoError("No free user ID was found for your account.")


def _same(a: str, b: str) -> bool:
    """A constant-time comparison of strings that may hold anything a request brought
    (`hmac.compare_digest` refuses non-ASCII `str`)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


async def _pkce(provider: OidcProvider) -> bool:
    try:
        return await provider.uses_pkce()
    except OidcError as e:
        raise SsoError(f"Signing in failed: {e}.") from None
