"""Email addresses on accounts: validation sessions, the emails that prove an address,
adding and removing addresses, and what password resets and logins by email need.

A validation session (`…/requestToken`) is one per (client_secret, medium, address): asking
again with a send_attempt no higher than the last sends nothing (the spec's idempotency).
Its token travels only in the emailed link and is stored hashed; the link's page validates
the session, which may then be used once (adding the address, or the
`m.login.email.identity` UIA stage of a password reset or of a registration, whose new
account gets the address) until it expires.

Invariants:
- An address belongs to one account at most; email addresses are lower-cased.
- Tokens, links and passwords are never logged (handlers/mailer.py logs a domain at most).
- Sending is rate limited per address and per client, so the server cannot be made to
  flood someone's mailbox.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.errors import Codes, MatrixError, bad_json, require_str
from homeserver.handlers.auth import Requester
from homeserver.handlers.mailer import Mailer, MailError
from homeserver.handlers.uia import UserInteractiveAuth
from homeserver.ratelimit import LimitExceeded, RateLimiter
from homeserver.storage.threepids import Threepid, ThreepidStore, ValidationSession, email_key

log = logging.getLogger(__name__)

EMAIL = "email"
MAX_EMAIL_LENGTH = 254

# Where each purpose's emailed link leads (Synapse's paths, so links look as users know them).
SUBMIT_PATHS = {
    "register": "/_matrix/client/unstable/registration/email/submit_token",
    "account/3pid": "/_matrix/client/unstable/add_threepid/email/submit_token",
    "account/password": "/_synapse/client/password_reset/email/submit_token",
}

NO_SESSION = "No validated 3pid session found"


# A plain addr-spec: dot-atom local part and domain, nothing a mail header or an SMTP relay
# would read as more than one mailbox (no commas, semicolons, colons, quotes, brackets,
# comments), and neither `%` nor `!`, which some relays still route on.
EMAIL_ADDRESS = re.compile(
    r"[A-Za-z0-9#$&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9#$&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# The spec's grammar for client_secret.
CLIENT_SECRET = re.compile(r"[0-9a-zA-Z.=_-]{1,255}")


def canonical_email(address: str) -> str:
    """The stored form of a new email address: one plain mailbox (EMAIL_ADDRESS), trimmed
    and lower-cased (storage.threepids.email_key)."""
    key = email_key(address)
    if len(key) > MAX_EMAIL_LENGTH or not EMAIL_ADDRESS.fullmatch(key):
        raise MatrixError(400, Codes.INVALID_PARAM, "Unable to parse email address")
    return key


def check_next_link(next_link: str, allowed_hosts: list[str] | None) -> None:
    """A `next_link` the link's page may send the browser to (Synapse's
    assert_valid_next_link, stricter): an http(s) URL with a host, in `allowed_hosts` when
    that is set. Whitespace and control characters are refused too, as they have no place
    in a Location header."""
    refused = MatrixError(
        400, Codes.INVALID_PARAM, "'next_link' domain not included in whitelist, or not http(s)"
    )
    try:
        url = urlsplit(next_link)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise refused from None
    host = url.hostname  # lower-cased
    if (
        url.scheme.lower() not in ("http", "https")
        or not host
        or any(c.isspace() or not c.isprintable() for c in next_link)
        or (allowed_hosts is not None and host not in allowed_hosts)
    ):
        raise refused


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True, frozen=True)
class TokenRequest:
    purpose: str
    client_secret: str
    address: str
    send_attempt: int
    # Where the link's page sends the browser once the session is validated (checked).
    next_link: str | None = None


class ThreepidHandler:
    def __init__(
        self, config: Config, store: ThreepidStore, mailer: Mailer, uia: UserInteractiveAuth, clock: Clock
    ) -> None:
        self.config = config
        self.email = config.email
        self.store = store
        self.mailer = mailer
        self.uia = uia
        self.clock = clock
        limits = config.rate_limits
        self.limiter = RateLimiter(
            clock,
            limits.threepid_validation_per_second,
            limits.threepid_validation_burst,
            enabled=limits.enabled,
        )

    # Validation sessions -----------------------------------------------------------------

    async def request_token(self, req: TokenRequest, client: str) -> dict[str, Any]:
        # Every request is charged, per address and per client, before anything is looked
        # up (as Synapse): the answers below also say whether an address has an account.
        # Both must have room before either is charged.
        keys = (f"address:{req.address}", f"client:{client}")
        waits = [wait for key in keys if (wait := self.limiter.retry_after_ms(key)) is not None]
        if waits:
            raise LimitExceeded(max(waits))
        for key in keys:
            self.limiter.check(key)
        if req.purpose != "account/password" and not self.address_allowed(req.address):
            raise MatrixError(403, Codes.THREEPID_DENIED, "This email address is not allowed on this server")
        owner = await self.store.user_for(EMAIL, req.address)
        if req.purpose == "account/password":
            if owner is None:
                raise MatrixError(400, Codes.THREEPID_NOT_FOUND, "Email not found")
        elif owner is not None:
            raise MatrixError(400, Codes.THREEPID_IN_USE, "Email is already in use")
        now = self.clock.time_ms()
        existing = await self.store.session_for_secret(req.client_secret, EMAIL, req.address)
        if existing is not None and (existing.validated_ts is not None or existing.expires_ts < now):
            # Only a pending session is continued (as Synapse): a proven one is used once,
            # for what it was asked for, and cannot be kept alive by resends.
            await self.store.delete_session(existing.session_id)
            existing = None
        if existing is not None and req.send_attempt <= existing.send_attempt:
            return {"sid": existing.session_id}
        token = secrets.token_urlsafe(24)
        expires = now + self.email.validation_token_lifetime_ms
        if existing is not None:
            sid = existing.session_id
            if not await self.store.new_token(
                sid, existing.send_attempt, req.send_attempt, hash_token(token), expires, req.next_link
            ):
                return {"sid": sid}  # a concurrent request with this attempt sent it
        else:
            sid = secrets.token_urlsafe(18)
            started = await self.store.start_session(
                sid,
                req.client_secret,
                EMAIL,
                req.address,
                hash_token(token),
                req.send_attempt,
                now,
                expires,
                req.next_link,
            )
            if not started:
                raced = await self.store.session_for_secret(req.client_secret, EMAIL, req.address)
                if raced is None:
                    raise MatrixError(500, Codes.UNKNOWN, "Could not start a validation session")
                return {"sid": raced.session_id}
        try:
            await self._send(req, sid, token)
        except MailError:
            # Let the client try again with the same send_attempt; the link it already has
            # keeps working.
            if existing is not None:
                await self.store.new_token(
                    sid,
                    req.send_attempt,
                    existing.send_attempt,
                    existing.token_hash,
                    existing.expires_ts,
                    existing.next_link,
                )
            else:
                await self.store.delete_session(sid)
            raise MatrixError(500, Codes.UNKNOWN, "An error was encountered when sending the email") from None
        return {"sid": sid}

    def address_allowed(self, address: str) -> bool:
        """`email.allowed_addresses`: the whole address matches one of the patterns."""
        patterns = self.email.allowed_addresses
        return patterns is None or any(re.fullmatch(p, address) for p in patterns)

    def submit_link(self, purpose: str, sid: str, client_secret: str, token: str) -> str:
        query = urlencode({"token": token, "client_secret": client_secret, "sid": sid})
        return f"{self.config.baseurl}{SUBMIT_PATHS[purpose]}?{query}"

    async def _send(self, req: TokenRequest, sid: str, token: str) -> None:
        link = self.submit_link(req.purpose, sid, req.client_secret, token)
        app, server = self.email.app_name, self.config.server_name
        if req.purpose == "account/password":
            subject = f"[{server}] Password reset"
            intro = f"A password reset was requested for your {app} account on {server}."
            action = "To reset your password, open this link and confirm:"
            ignore = "If this was not you, ignore this email: your password stays as it is."
        else:
            subject = f"[{server}] Validate your email"
            what = "a new account" if req.purpose == "register" else "your account"
            intro = f"You asked to add this email address to {what} on {server} ({app})."
            action = "To confirm that it is yours, open this link:"
            ignore = "If this was not you, ignore this email."
        text = f"{intro}\n\n{action}\n\n{link}\n\nThe link works for a limited time. {ignore}\n"
        html = (
            f"<p>{escape(intro)}</p><p>{escape(action)}</p>"
            f'<p><a href="{escape(link)}">{escape(link)}</a></p>'
            f"<p>The link works for a limited time. {escape(ignore)}</p>"
        )
        await self.mailer.send(req.address, subject, text, html)

    async def validate_token(self, sid: str, client_secret: str, token: str) -> str | None:
        """The emailed link was followed: the session is validated (400 if the link is
        wrong or expired). Returns the session's next_link, if its request gave one."""
        session = await self.store.session(sid)
        now = self.clock.time_ms()
        if (
            session is None
            or not CLIENT_SECRET.fullmatch(client_secret)  # ASCII, as compare_digest needs
            or not hmac.compare_digest(session.client_secret, client_secret)
            or not hmac.compare_digest(session.token_hash, hash_token(token))
            or session.expires_ts < now
        ):
            raise MatrixError(400, Codes.THREEPID_AUTH_FAILED, "This link is invalid or has expired")
        if session.validated_ts is None:
            await self.store.mark_validated(sid, now, now + self.email.validation_token_lifetime_ms)
        return session.next_link

    async def validated_session(self, sid: str, client_secret: str) -> ValidationSession:
        session = await self.store.session(sid)
        if (
            session is None
            or not CLIENT_SECRET.fullmatch(client_secret)
            or not hmac.compare_digest(session.client_secret, client_secret)
            or session.validated_ts is None
            or session.expires_ts < self.clock.time_ms()
        ):
            raise MatrixError(400, Codes.THREEPID_AUTH_FAILED, NO_SESSION)
        return session

    # The UIA stage m.login.email.identity (homeserver/handlers/uia.py) -----------------------

    async def _session_for_creds(self, creds: Any) -> ValidationSession:
        if not isinstance(creds, dict):
            raise bad_json("threepid_creds must be an object")
        return await self.validated_session(require_str(creds, "sid"), require_str(creds, "client_secret"))

    async def user_for_creds(self, creds: Any) -> str:
        """The account whose address a validated session proves; the session is used up."""
        session = await self._session_for_creds(creds)
        user_id = await self.store.user_for(session.medium, session.address)
        if user_id is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Email address not found")
        await self.store.delete_session(session.session_id)
        return user_id

    async def session_for_new_account(self, creds: Any) -> str:
        """The ID of the validated session proving a registration's address, which must be
        free. It is used up with the account's creation (storage.threepids.bind_validated),
        which checks the address again."""
        session = await self._session_for_creds(creds)
        if await self.store.user_for(session.medium, session.address) is not None:
            raise MatrixError(400, Codes.THREEPID_IN_USE, "Email is already in use")
        return session.session_id

    # A user's addresses ------------------------------------------------------------------

    async def list(self, user_id: str) -> list[Threepid]:
        return await self.store.of_user(user_id)

    async def add(self, requester: Requester, body: Mapping[str, Any], client_secret: str, sid: str) -> None:
        result = await self.uia.check(
            operation="POST /account/3pid/add",
            flows=self.uia.user_flows(),
            auth=body.get("auth"),
            requester=requester.user_id,
        )
        session = await self.validated_session(sid, client_secret)
        assert session.validated_ts is not None
        now = self.clock.time_ms()
        if not await self.store.add(
            requester.user_id, session.medium, session.address, session.validated_ts, now
        ):
            raise MatrixError(400, Codes.THREEPID_IN_USE, "Email is already in use")
        await self.uia.finish(result)
        await self.store.delete_session(session.session_id)
        log.info("%s added an email address", requester.user_id)

    async def remove(self, user_id: str, medium: str, address: str) -> bool:
        return await self.store.remove(user_id, medium, email_key(address) if medium == EMAIL else address)
