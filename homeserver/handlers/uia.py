"""User-interactive authentication (UIA): sessions, flows and the stages we offer.

An endpoint protected by UIA calls `UserInteractiveAuth.check` with the flows
it accepts. Until a flow is complete, `check` raises `InteractiveAuthRequired`
(a 401 carrying `flows`, `params`, `session` and, once something is done,
`completed`); when one is, it returns a `UIAResult` and the endpoint performs
its action, then calls `finish` so the session cannot be replayed.

Invariants:
- Sessions live in the database (`uia_sessions`), so every worker sees every
  session, bounded in number and lifetime (TTL on the injected clock, then the
  least recently used). A lost or expired session simply starts a new one.
- A session is bound to the operation and the requester that started it, so
  auth completed for one action cannot authorise another.
- Stages are completed in flow order; a completed stage is never re-run.
- Failed stage attempts are counted per session; too many end the session.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from homeserver.clock import Clock
from homeserver.errors import Codes, InteractiveAuthRequired, MatrixError, bad_json, missing_param
from homeserver.handlers.auth import PasswordHasher
from homeserver.storage.accounts import AccountStore
from homeserver.storage.threepids import email_key
from homeserver.storage.uia_sessions import UIASessionStore

STAGE_DUMMY = "m.login.dummy"
STAGE_PASSWORD = "m.login.password"
STAGE_REGISTRATION_TOKEN = "m.login.registration_token"
# Completed in a browser, through the fallback page and the identity provider
# (homeserver/api/sso.py), never by a request's `auth`.
STAGE_SSO = "m.login.sso"
# For devices signed in through the OAuth 2.0 API: the user approves the action in the
# account pages (homeserver/api/oauth.py), then the client sends `auth` with the session only.
STAGE_OAUTH = "m.oauth"
# A validated email session (homeserver/handlers/threepids.py), when email is configured:
# offered for password resets without an access token (the address names the account), and
# at registration (the address must be free; the new account gets it).
STAGE_EMAIL = "m.login.email.identity"
# The user accepted the policies in the stage's params (registration only, when the server
# has terms): the spec asks for nothing but the session, so it is done by being sent, or
# through the fallback page (homeserver/api/terms_fallback.py). The session remembers the
# version its 401s presented; if the server's changed meanwhile, the stage is refused and
# the new one presented (the spec: the server tracks which versions it presented).
STAGE_TERMS = "m.login.terms"
SUPPORTED_STAGES = frozenset(
    {STAGE_DUMMY, STAGE_PASSWORD, STAGE_REGISTRATION_TOKEN, STAGE_SSO, STAGE_OAUTH, STAGE_EMAIL, STAGE_TERMS}
)

SESSION_TTL_MS = 15 * 60 * 1000
MAX_SESSIONS = 10_000
# Our session IDs are 32 characters; anything much longer was never issued here.
MAX_SESSION_ID_LENGTH = 64
MAX_FAILED_ATTEMPTS = 10

# Registration tokens use the opaque identifier grammar, at most 64 characters.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~\-]{1,64}$")

Flow = Sequence[str]

# The operation of POST /register's sessions, whose email stage proves a new account's address.
OPERATION_REGISTER = "POST /register"


class OAuthApprovals(Protocol):
    """What the `m.oauth` stage needs of the OAuth 2.0 server (homeserver/handlers/oauth.py)."""

    async def is_oauth_session(self, user_id: str, device_id: str) -> bool: ...

    async def take_reset_approval(self, user_id: str) -> bool: ...

    def reset_url(self) -> str: ...


class EmailIdentity(Protocol):
    """What the `m.login.email.identity` stage needs (homeserver/handlers/threepids.py)."""

    async def user_for_creds(self, creds: Any) -> str: ...

    async def session_for_new_account(self, creds: Any) -> str: ...


class ThreepidLookup(Protocol):
    """The account an address belongs to (homeserver/storage/threepids.py)."""

    async def user_for(self, medium: str, address: str) -> str | None: ...


class StageFailed(Exception):
    """A stage attempt that failed but may be retried (401 with errcode/error)."""

    def __init__(self, errcode: Codes | str, message: str, *, counts: bool = True) -> None:
        super().__init__(message)
        self.errcode = str(errcode)
        self.message = message
        # False: not a guess, so not one of the failed attempts that end a session.
        self.counts = counts


@dataclass(slots=True)
class UIASession:
    session_id: str
    operation: str
    owner: str | None
    last_used_ms: int
    completed: list[str] = field(default_factory=list)
    # The user a password stage authenticated (the account acted on when there is no access token).
    user_id: str | None = None
    registration_token: str | None = None
    # Request parameters from earlier requests in this session (clients may omit them later).
    client_params: dict[str, Any] = field(default_factory=dict)
    failures: int = 0
    # A new password given in the session (registration), kept only hashed.
    password_hash: str | None = None
    # The validated email session a registration's email stage proved (used up with the account).
    threepid_session: str | None = None
    # The version of the policies presented with the m.login.terms params (set by the first
    # 401 that carries them, and again when the stage is refused or undone and they are
    # presented anew): the version the terms stage accepts, and the one recorded.
    terms_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        # The ID and the last use are the row's key and column, not part of its data.
        data = dataclasses.asdict(self)
        del data["session_id"], data["last_used_ms"]
        return data

    @classmethod
    def from_json(cls, session_id: str, last_used_ms: int, data: Mapping[str, Any]) -> UIASession:
        return cls(
            session_id,
            str(data["operation"]),
            data.get("owner"),
            last_used_ms,
            list(data.get("completed") or []),
            data.get("user_id"),
            data.get("registration_token"),
            dict(data.get("client_params") or {}),
            int(data.get("failures") or 0),
            data.get("password_hash"),
            data.get("threepid_session"),
            data.get("terms_version"),
        )


@dataclass(slots=True, frozen=True)
class UIAResult:
    session_id: str
    completed: tuple[str, ...]
    user_id: str | None
    registration_token: str | None
    client_params: Mapping[str, Any]
    password_hash: str | None
    threepid_session: str | None = None
    # The version of the policies accepted, when the terms stage is among `completed`.
    terms_version: str | None = None


# User identification (shared with /login) -----------------------------------------------


def _thirdparty(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(medium, address) of an `m.id.thirdparty` identifier (or the legacy top-level pair)."""
    identifier = body.get("identifier")
    if identifier is None and "user" not in body and "medium" in body and "address" in body:
        identifier = {"type": "m.id.thirdparty", "medium": body["medium"], "address": body["address"]}
    if not isinstance(identifier, dict) or identifier.get("type") != "m.id.thirdparty":
        return None
    medium, address = identifier.get("medium"), identifier.get("address")
    if not isinstance(medium, str) or not isinstance(address, str):
        raise bad_json("identifier.medium and identifier.address must be strings")
    return medium, email_key(address) if medium == "email" else address


async def identify_user(body: Mapping[str, Any], server_name: str, threepids: ThreepidLookup | None) -> str:
    """`user_id_from_identifier`, and with `threepids` (email is configured) the account an
    `m.id.thirdparty` address belongs to; an unknown address is refused as a wrong password is."""
    if threepids is not None and (found := _thirdparty(body)) is not None:
        user_id = await threepids.user_for(*found)
        if user_id is None:
            raise MatrixError(403, Codes.FORBIDDEN, "Invalid username or password")
        return user_id
    return user_id_from_identifier(body, server_name)


def user_id_from_identifier(body: Mapping[str, Any], server_name: str) -> str:
    """The user ID named by a login/UIA body's `identifier` (or legacy `user`).

    Third-party identifiers are refused with 403 (`identify_user` resolves them when
    email is configured); the spec asks for 403 when the 3PID is unknown.
    """
    identifier = body.get("identifier")
    if identifier is None:
        if "user" in body:
            identifier = {"type": "m.id.user", "user": body["user"]}
        elif "medium" in body or "address" in body:
            identifier = {"type": "m.id.thirdparty"}
        else:
            raise missing_param("identifier")
    if not isinstance(identifier, dict):
        raise bad_json("identifier must be an object")
    id_type = identifier.get("type")
    if id_type == "m.id.user":
        user = identifier.get("user")
        if user is None:
            raise missing_param("identifier.user")
        if not isinstance(user, str) or not user:
            raise bad_json("identifier.user must be a non-empty string")
        return qualify_user_id(user, server_name)
    if id_type in ("m.id.thirdparty", "m.id.phone"):
        raise MatrixError(403, Codes.FORBIDDEN, "Unknown third-party identifier")
    raise MatrixError(400, Codes.UNKNOWN, "Unknown login identifier type")


def qualify_user_id(user: str, server_name: str) -> str:
    """A full user ID from a localpart or a full user ID."""
    return user if user.startswith("@") else f"@{user}:{server_name}"


async def check_password_login(
    accounts: AccountStore, passwords: PasswordHasher, server_name: str, user_id: str, password: Any
) -> str:
    """Verify a local user's password; returns the canonical user ID.

    Raises 403 M_FORBIDDEN for an unknown user or a wrong password, and
    403 M_USER_DEACTIVATED for a deactivated account.
    """
    if password is None:
        raise missing_param("password")
    if not isinstance(password, str):
        raise bad_json("password must be a string")
    invalid = MatrixError(403, Codes.FORBIDDEN, "Invalid username or password")
    _, _, domain = user_id.partition(":")
    if domain != server_name:
        raise invalid
    user = await accounts.get_user(user_id)
    if user is None:
        found = await accounts.find_user_case_insensitive(user_id)
        user = await accounts.get_user(found) if found else None
    if user is None:
        raise invalid
    if user["deactivated"]:
        raise MatrixError(403, Codes.USER_DEACTIVATED, "This account has been deactivated")
    password_hash = user["password_hash"]
    if not await passwords.check(password, password_hash if isinstance(password_hash, str) else None):
        raise invalid
    return str(user["user_id"])


# Sessions and flows ------------------------------------------------------------------------


def flows_json(flows: Sequence[Flow]) -> list[dict[str, list[str]]]:
    return [{"stages": list(flow)} for flow in flows]


def presented_terms_version(params: Mapping[str, Any] | None) -> str | None:
    """The version of the policies in a 401's `m.login.terms` params (None: none there).
    Sotto gives every policy the server's one version; a mixture is named by all of them."""
    terms = (params or {}).get(STAGE_TERMS)
    policies = terms.get("policies") if isinstance(terms, Mapping) else None
    if not isinstance(policies, Mapping):
        return None
    versions = sorted({str(p.get("version")) for p in policies.values() if isinstance(p, Mapping)})
    return ",".join(versions) or None


class UserInteractiveAuth:
    def __init__(
        self,
        accounts: AccountStore,
        passwords: PasswordHasher,
        clock: Clock,
        server_name: str,
        sessions: UIASessionStore,
        *,
        session_ttl_ms: int = SESSION_TTL_MS,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.accounts = accounts
        self.passwords = passwords
        self.clock = clock
        self.server_name = server_name
        self.sessions = sessions
        self.session_ttl_ms = session_ttl_ms
        self.max_sessions = max_sessions
        # Single sign-on is configured: users may prove themselves through it.
        self.sso_enabled = False
        # The OAuth 2.0 API is on: its devices re-authenticate through the account pages.
        self.oauth: OAuthApprovals | None = None
        # Email is configured: addresses identify users, and prove them in password resets.
        self.email: EmailIdentity | None = None
        self.threepids: ThreepidLookup | None = None

    def user_flows(self) -> list[Flow]:
        """The flows re-authenticating a signed-in user: the password, or single sign-on
        (the only way for users who signed up through it, and have no password)."""
        return [[STAGE_PASSWORD], [STAGE_SSO]] if self.sso_enabled else [[STAGE_PASSWORD]]

    def password_flows(self, authenticated: bool) -> list[Flow]:
        """Flows for changing the password: `user_flows`, and without an access token (a
        forgotten password) a validated email address when email is configured."""
        if authenticated or self.email is None:
            return self.user_flows()
        return [*self.user_flows(), [STAGE_EMAIL]]

    async def reset_flows(self, user_id: str, device_id: str) -> tuple[list[Flow], dict[str, Any]]:
        """Flows and params for replacing cross-signing keys: `m.oauth` for a device signed in
        through the OAuth 2.0 API (which cannot do UIA otherwise), else `user_flows`."""
        if self.oauth is not None and await self.oauth.is_oauth_session(user_id, device_id):
            return [[STAGE_OAUTH]], {STAGE_OAUTH: {"url": self.oauth.reset_url()}}
        return self.user_flows(), {}

    async def pending(self, session_id: str) -> tuple[str, str | None] | None:
        """(operation, owner) of a live session, for the single sign-on pages."""
        session = await self._get_session(session_id)
        return (session.operation, session.owner) if session is not None else None

    async def complete_sso(self, session_id: str, user_id: str) -> bool:
        """Mark the single sign-on stage done: `user_id` signed in through the identity
        provider. False if the session is gone or belongs to someone else."""
        session = await self._get_session(session_id)
        if session is None or session.owner is None or session.owner != user_id:
            return False
        if STAGE_SSO not in session.completed and not session.completed:
            session.completed.append(STAGE_SSO)
            session.user_id = user_id
        await self._save(session)
        return STAGE_SSO in session.completed

    async def session_count(self) -> int:
        return await self.sessions.count()

    async def check(
        self,
        *,
        operation: str,
        flows: Sequence[Flow],
        auth: Any,
        requester: str | None = None,
        client_params: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        password: str | None = None,
    ) -> UIAResult:
        """Advance the UIA session named in `auth`; return once a flow is complete.

        `operation` names the protected action (method and path); `requester`
        is the authenticated user, if the request carried an access token;
        `client_params` are the request's other parameters, remembered so that
        later requests in the session may omit them. `password` is a new password
        in the request (registration): the session keeps only its hash, made the
        first time one is given (the result's `password_hash`), never the password.
        """
        if auth is not None and not isinstance(auth, dict):
            raise bad_json("auth must be an object")
        session = await self._get_session(auth.get("session") if auth else None)
        if session is None:
            session = await self._new_session(operation, requester)
        elif session.operation != operation or session.owner != requester:
            raise MatrixError(
                403, Codes.FORBIDDEN, "Requested operation has changed during the UI authentication session"
            )
        if client_params:
            session.client_params = dict(client_params)
        if password is not None and session.password_hash is None:
            session.password_hash = await self.passwords.hash(password)
        try:
            return await self._advance(session, flows, auth, params)
        finally:
            # Whatever the outcome (a 401 asking for more is the usual one), the next request
            # may reach another worker: it reads the session from the database.
            if session.failures >= MAX_FAILED_ATTEMPTS:
                await self.sessions.delete(session.session_id)
            else:
                await self._save(session)

    async def _advance(
        self, session: UIASession, flows: Sequence[Flow], auth: Any, params: Mapping[str, Any] | None
    ) -> UIAResult:
        if auth is None:
            # The spec requires a 401 for a request without auth, even if only dummy auth is needed.
            self._require(session, flows, params)
        if self._complete(session, flows):
            return self._result(session)
        stage = auth.get("type")
        if stage is None and STAGE_OAUTH in self._next_stages(session, flows):
            # The spec's m.oauth retry: `auth` carries only the session.
            stage = STAGE_OAUTH
        if stage is not None:
            if not isinstance(stage, str):
                raise bad_json("auth.type must be a string")
            all_stages = {s for flow in flows for s in flow}
            if stage not in all_stages or stage not in SUPPORTED_STAGES:
                raise MatrixError(400, Codes.UNRECOGNIZED, f"Unrecognised authentication type {stage}")
            if stage not in session.completed:
                if stage not in self._next_stages(session, flows):
                    self._require(
                        session,
                        flows,
                        params,
                        Codes.FORBIDDEN,
                        f"{stage} cannot be completed at this point of the flow",
                    )
                try:
                    await self._run_stage(session, stage, auth, params)
                except StageFailed as e:
                    session.failures += 1 if e.counts else 0
                    if session.failures >= MAX_FAILED_ATTEMPTS:
                        raise MatrixError(403, Codes.FORBIDDEN, "Too many failed attempts") from None
                    self._require(session, flows, params, e.errcode, e.message)
                # A concurrent request may have completed the stage while this one awaited.
                if stage not in session.completed:
                    session.completed.append(stage)
        if self._complete(session, flows):
            return self._result(session)
        self._require(session, flows, params)

    async def finish(self, result: UIAResult) -> None:
        """Forget a session once its operation succeeded, so it cannot be replayed."""
        await self.sessions.delete(result.session_id)

    async def reject_stage(
        self,
        result: UIAResult,
        stage: str,
        flows: Sequence[Flow],
        errcode: Codes | str,
        message: str,
        params: Mapping[str, Any] | None = None,
    ) -> NoReturn:
        """Undo a completed stage that turned out invalid when acted on (an exhausted token),
        and the stages after it. The 401 carries `params` (those of `check`): the stages
        undone are asked again, with what they need to be done (the policies of the terms)."""
        session = await self._get_session(result.session_id)
        if session is None:
            raise MatrixError(403, errcode, message)
        if stage in session.completed:
            del session.completed[session.completed.index(stage) :]
        if STAGE_TERMS not in session.completed:
            # Presented anew by this 401, as configured now.
            session.terms_version = None
        try:
            self._require(session, flows, params, errcode, message)
        finally:
            await self._save(session)

    async def terms_stage(self, session_id: str, operation: str, flows: Sequence[Flow]) -> bool | None:
        """For the terms fallback page: None if there is no such session of `operation`; else
        whether its terms stage may be done now (it is next in one of `flows`, or done)."""
        session = await self._get_session(session_id)
        if session is None or session.operation != operation:
            return None
        return STAGE_TERMS in session.completed or STAGE_TERMS in self._next_stages(session, flows)

    async def complete_terms(
        self,
        session_id: str,
        operation: str,
        flows: Sequence[Flow],
        params: Mapping[str, Any],
        accepted: str,
    ) -> None:
        """Mark the terms stage done from the fallback page, where the user accepted the
        policies of version `accepted` (the one the page showed). `params` are the stage's
        current params (those `check` would send). Raises StageFailed, whose message is for
        the page, if the session is gone or is not at the terms stage, or if the version
        shown is no longer the server's."""
        session = await self._get_session(session_id)
        if session is None or session.operation != operation:
            raise StageFailed(Codes.FORBIDDEN, "This registration has expired. Start again from your app.")
        if STAGE_TERMS in session.completed:
            return  # the form sent twice
        if STAGE_TERMS not in self._next_stages(session, flows):
            raise StageFailed(Codes.FORBIDDEN, "Complete the other steps in your app first.")
        current = presented_terms_version(params)
        if current is None or accepted != current:
            raise StageFailed(
                Codes.FORBIDDEN, "The terms have changed: review the new version and accept it."
            )
        session.terms_version = current
        session.completed.append(STAGE_TERMS)
        await self._save(session)

    # Internals -------------------------------------------------------------------------

    async def _get_session(self, session_id: Any) -> UIASession | None:
        if session_id is None:
            return None
        if not isinstance(session_id, str):
            raise bad_json("auth.session must be a string")
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            return None  # not one of ours
        now = self.clock.time_ms()
        data = await self.sessions.get(session_id, now - self.session_ttl_ms)
        if data is None:
            return None
        return UIASession.from_json(session_id, now, data)

    async def _new_session(self, operation: str, owner: str | None) -> UIASession:
        now = self.clock.time_ms()
        # Room for this one; the session itself is stored when `check` ends.
        await self.sessions.prune(now - self.session_ttl_ms, self.max_sessions - 1)
        return UIASession(secrets.token_urlsafe(24), operation, owner, now)

    async def _save(self, session: UIASession) -> None:
        await self.sessions.put(session.session_id, session.last_used_ms, session.to_json())

    @staticmethod
    def _next_stages(session: UIASession, flows: Sequence[Flow]) -> set[str]:
        done = session.completed
        return {
            flow[len(done)] for flow in flows if len(flow) > len(done) and list(flow[: len(done)]) == done
        }

    @staticmethod
    def _complete(session: UIASession, flows: Sequence[Flow]) -> bool:
        return any(list(flow) == session.completed for flow in flows)

    @staticmethod
    def _result(session: UIASession) -> UIAResult:
        return UIAResult(
            session.session_id,
            tuple(session.completed),
            session.user_id,
            session.registration_token,
            session.client_params,
            session.password_hash,
            session.threepid_session,
            session.terms_version if STAGE_TERMS in session.completed else None,
        )

    @staticmethod
    def _require(
        session: UIASession,
        flows: Sequence[Flow],
        params: Mapping[str, Any] | None,
        errcode: str | None = None,
        error: str | None = None,
    ) -> NoReturn:
        if session.terms_version is None:
            # The first 401 with the policies: the version the terms stage will accept.
            session.terms_version = presented_terms_version(params)
        body: dict[str, Any] = {
            "flows": flows_json(flows),
            "params": dict(params or {}),
            "session": session.session_id,
        }
        if session.completed:
            body["completed"] = list(session.completed)
        if errcode is not None:
            body["errcode"] = str(errcode)
            body["error"] = error or ""
        raise InteractiveAuthRequired(body)

    async def _run_stage(
        self, session: UIASession, stage: str, auth: Mapping[str, Any], params: Mapping[str, Any] | None
    ) -> None:
        if stage == STAGE_DUMMY:
            return
        if stage == STAGE_TERMS:
            current = presented_terms_version(params)
            if current is None or current != session.terms_version:
                # Not what the user was shown: the refusal's 401 presents the server's version.
                session.terms_version = current
                raise StageFailed(
                    Codes.FORBIDDEN,
                    "The terms have changed: review the new version and accept it",
                    counts=False,
                )
        elif stage == STAGE_PASSWORD:
            await self._password_stage(session, auth)
        elif stage == STAGE_REGISTRATION_TOKEN:
            await self._registration_token_stage(session, auth)
        elif stage == STAGE_OAUTH:
            owner = session.owner
            if self.oauth is None or owner is None or not await self.oauth.take_reset_approval(owner):
                raise StageFailed(Codes.FORBIDDEN, "Approve this in your account page first")
            session.user_id = owner
        elif stage == STAGE_EMAIL:
            await self._email_stage(session, auth)
        elif stage == STAGE_SSO:
            raise StageFailed(
                Codes.FORBIDDEN, "Complete single sign-on in a browser (the fallback page) first"
            )

    async def _password_stage(self, session: UIASession, auth: Mapping[str, Any]) -> None:
        try:
            claimed = await identify_user(auth, self.server_name, self.threepids)
            user_id = await check_password_login(
                self.accounts, self.passwords, self.server_name, claimed, auth.get("password")
            )
        except MatrixError as e:
            if e.status != 403:
                raise
            raise StageFailed(e.errcode, e.message) from None
        if session.owner is not None and user_id != session.owner:
            raise StageFailed(Codes.FORBIDDEN, "The password given is not for the logged-in user")
        if session.user_id is not None and user_id != session.user_id:
            raise StageFailed(Codes.FORBIDDEN, "A different user already authenticated in this session")
        session.user_id = user_id

    async def _email_stage(self, session: UIASession, auth: Mapping[str, Any]) -> None:
        if self.email is None:
            raise StageFailed(Codes.UNRECOGNIZED, "Email is not configured on this server")
        creds = auth.get("threepid_creds", auth.get("threepidCreds"))  # the latter: older clients
        try:
            if session.operation == OPERATION_REGISTER:
                # A new account's address: the validation session is used up only with the
                # account's creation (homeserver/handlers/registration.py).
                session.threepid_session = await self.email.session_for_new_account(creds)
                return
            user_id = await self.email.user_for_creds(creds)
        except MatrixError as e:
            if e.errcode != Codes.THREEPID_AUTH_FAILED:
                raise
            # Not counted (session IDs cannot be guessed), so a client may keep asking while
            # its user opens the link.
            raise StageFailed(e.errcode, e.message, counts=False) from None
        if session.owner is not None and user_id != session.owner:
            raise StageFailed(Codes.FORBIDDEN, "The email address is not the logged-in user's")
        if session.user_id is not None and user_id != session.user_id:
            raise StageFailed(Codes.FORBIDDEN, "A different user already authenticated in this session")
        session.user_id = user_id

    async def _registration_token_stage(self, session: UIASession, auth: Mapping[str, Any]) -> None:
        token = auth.get("token")
        if token is None:
            raise missing_param("token")
        if not isinstance(token, str):
            raise bad_json("token must be a string")
        if not _TOKEN_RE.match(token) or not await self.accounts.registration_token_valid(
            token, self.clock.time_ms()
        ):
            raise StageFailed(Codes.UNAUTHORIZED, "Invalid registration token")
        session.registration_token = token


def valid_token_syntax(token: str) -> bool:
    return bool(_TOKEN_RE.match(token))
