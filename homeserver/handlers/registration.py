"""The account lifecycle: registration, password login, password change, deactivation.

Every write that ends a session (password change, deactivation) goes through
`DeviceHandler.delete_devices`, so tokens leave the auth cache and per-device
data (E2EE keys) is cleaned up by the hooks registered there.

Passwords and tokens are never logged.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.appservice.registration import AppServices
from homeserver.clock import Clock
from homeserver.config import Config, TermsConfig
from homeserver.errors import (
    Codes,
    MatrixError,
    forbidden,
    missing_param,
    optional_bool,
    optional_str,
    require_str,
)
from homeserver.handlers.auth import AuthHandler, PasswordHasher, Requester, generate_token, hash_token
from homeserver.handlers.deactivation import Deactivator
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.event_creation import EventCreator
from homeserver.handlers.guests import guest_localpart
from homeserver.handlers.threepids import NO_SESSION
from homeserver.handlers.uia import (
    OPERATION_REGISTER,
    STAGE_DUMMY,
    STAGE_EMAIL,
    STAGE_REGISTRATION_TOKEN,
    STAGE_TERMS,
    Flow,
    ThreepidLookup,
    UIAResult,
    UserInteractiveAuth,
    check_password_login,
    identify_user,
    valid_token_syntax,
)
from homeserver.handlers.users import create_account, validate_localpart
from homeserver.ratelimit import RateLimiter
from homeserver.storage.accounts import AccountStore
from homeserver.storage.events import EventStore
from homeserver.storage.oauth import OAuthStore
from homeserver.storage.openid import ExpiringTokens
from homeserver.storage.threepids import ThreepidUnavailable

log = logging.getLogger(__name__)

MAX_PASSWORD_LEN = 512
# Registration tokens come first and are followed by m.login.dummy, as Synapse offers them:
# matrix-nio's register_with_token completes the token stage and then a dummy stage.
TOKEN_FLOW: Flow = [STAGE_REGISTRATION_TOKEN, STAGE_DUMMY]


def terms_params(terms: TermsConfig) -> dict[str, Any]:
    """The m.login.terms stage's params: every policy, with the version, in each language."""
    return {"policies": {pid: {"version": terms.version, **docs} for pid, docs in terms.policies.items()}}


def validate_password(password: str | None) -> None:
    if password is None:
        return
    if not password:
        raise MatrixError(400, Codes.WEAK_PASSWORD, "Password must not be empty")
    if len(password) > MAX_PASSWORD_LEN:
        raise MatrixError(400, Codes.INVALID_PARAM, "Password is too long")


async def check_username_free(
    accounts: AccountStore, appservices: AppServices | None, server_name: str, username: str
) -> str:
    """The user ID a desired username maps to, if it is valid and free; open registration is
    the caller's concern (the admin API asks even when it is closed)."""
    user_id = validate_localpart(username.lower(), server_name)
    if username.isdigit():
        raise MatrixError(400, Codes.INVALID_USERNAME, "Numeric user IDs are reserved for guest users")
    if appservices and appservices.user_claimed_by(user_id) is not None:
        raise MatrixError(400, Codes.EXCLUSIVE, "This user ID is reserved by an application service")
    if await accounts.find_user_case_insensitive(user_id):
        raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken")
    return user_id


# How long a token from POST /login/get_token may be used (the spec suggests minutes).
LOGIN_TOKEN_LIFETIME_MS = 120_000


def login_limiter(config: Config, clock: Clock) -> RateLimiter:
    limits = config.rate_limits
    return RateLimiter(clock, limits.login_per_second, limits.login_burst, enabled=limits.enabled)


# Where a registration session remembers the guest account it upgrades. Clients cannot set
# it: the key is dropped from the parameters a request brings.
_UPGRADING = "\x00upgrading_guest"


@dataclass(slots=True, frozen=True)
class RegistrationRequest:
    username: str | None = None
    password: str | None = None
    device_id: str | None = None
    initial_device_display_name: str | None = None
    inhibit_login: bool = False
    refresh_token: bool = False

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RegistrationRequest:
        req = cls(
            username=optional_str(body, "username"),
            password=optional_str(body, "password"),
            device_id=optional_str(body, "device_id"),
            initial_device_display_name=optional_str(body, "initial_device_display_name"),
            inhibit_login=optional_bool(body, "inhibit_login", False),
            refresh_token=optional_bool(body, "refresh_token", False),
        )
        validate_password(req.password)
        return req


class RegistrationHandler:
    def __init__(
        self,
        config: Config,
        accounts: AccountStore,
        passwords: PasswordHasher,
        auth: AuthHandler,
        uia: UserInteractiveAuth,
        clock: Clock,
        appservices: AppServices | None = None,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.passwords = passwords
        self.auth = auth
        self.uia = uia
        self.clock = clock
        self.appservices = appservices
        # Called with the user ID once a registration's email stage gave the account its
        # address (api/register.py sets it for `email.notif_for_new_users`).
        self.on_email_registered: Callable[[str], Awaitable[None]] | None = None
        limits = config.rate_limits
        self.limiter = RateLimiter(
            clock, limits.register_per_second, limits.register_burst, enabled=limits.enabled
        )
        self.validity_limiter = RateLimiter(
            clock, limits.register_per_second, limits.register_burst, enabled=limits.enabled
        )

    @property
    def server_name(self) -> str:
        return self.config.server_name

    @property
    def flows(self) -> list[Flow]:
        flows = self._flows_before_terms()
        # As Synapse's: with terms, every flow ends with accepting them.
        if self.config.registration.terms is None:
            return flows
        return [[*flow, STAGE_TERMS] for flow in flows]

    def _flows_before_terms(self) -> list[Flow]:
        registration = self.config.registration
        flows = [TOKEN_FLOW] if registration.requires_token else [[STAGE_DUMMY], TOKEN_FLOW]
        if not self.config.email.enabled:
            return flows
        # As Synapse's: the email stage takes the place of the dummy stage (which only tells
        # the flows apart), and with `require_email` the flows without it go.
        with_email: list[Flow] = [[*flow[:-1], STAGE_EMAIL] for flow in flows]
        return with_email if registration.require_email else [*flows, *with_email]

    @property
    def terms(self) -> TermsConfig | None:
        """The policies new users accept (None: the server has none)."""
        return self.config.registration.terms

    def stage_params(self) -> dict[str, Any] | None:
        """The params of registration's 401s: the policies of the terms stage, if any."""
        terms = self.terms
        return {STAGE_TERMS: terms_params(terms)} if terms is not None else None

    def _require_open(self) -> None:
        if not self.config.registration.enabled:
            raise forbidden("Registration has been disabled")

    async def check_username(self, username: str) -> str:
        """Validate a desired username and check it is free; returns the user ID it maps to."""
        self._require_open()
        return await check_username_free(self.accounts, self.appservices, self.server_name, username)

    async def token_validity(self, token: str, client: str = "") -> bool:
        self._require_open()
        # The spec asks for a limit here: the endpoint is an oracle for guessing tokens.
        self.validity_limiter.check(client)
        return valid_token_syntax(token) and await self.accounts.registration_token_valid(
            token, self.clock.time_ms()
        )

    async def register(self, kind: str, body: Mapping[str, Any], client: str = "") -> dict[str, Any]:
        """Handle one POST /register; `client` (the caller's address) keys the rate limit."""
        self.limiter.check(client)
        if kind == "guest":
            return await self._register_guest(body)
        if kind != "user":
            raise MatrixError(400, Codes.INVALID_PARAM, "kind must be 'user' or 'guest'")
        self._require_open()
        # The guest's token is checked here and not remembered: the session keeps the
        # guest's user ID instead, under a key no client can set.
        params = {k: v for k, v in body.items() if k not in ("auth", "guest_access_token", _UPGRADING)}
        req = RegistrationRequest.from_json(params)
        guest_token = optional_str(body, "guest_access_token")
        if guest_token is not None:
            params[_UPGRADING] = await self._guest_to_upgrade(guest_token, req.username)
        elif req.username is not None:
            # A taken or invalid name is reported before the client goes through any auth stage.
            await self.check_username(req.username)
        flows = self.flows
        # The session (in the database: the next step may reach another worker) remembers the
        # parameters but never the password, only its hash, made once per session. A password
        # sent again with a later step is not hashed again: the first one given counts.
        remembered = {k: v for k, v in params.items() if k != "password"}
        stage_params = self.stage_params()
        result = await self.uia.check(
            operation=OPERATION_REGISTER,
            flows=flows,
            auth=body.get("auth"),
            client_params=remembered,
            params=stage_params,
            password=req.password,
        )
        # Later requests in a session may carry only `auth`: use the parameters remembered with it.
        req = RegistrationRequest.from_json(result.client_params)
        token = result.registration_token if STAGE_REGISTRATION_TOKEN in result.completed else None
        if token is not None and not await self.accounts.consume_registration_token(
            token, self.clock.time_ms()
        ):
            await self.uia.reject_stage(
                result,
                STAGE_REGISTRATION_TOKEN,
                flows,
                Codes.UNAUTHORIZED,
                "Registration token is no longer valid",
                stage_params,
            )
        try:
            user_id = await self._new_account(req, result, flows, stage_params)
        except BaseException:
            # A token use counts only for a registration that succeeded.
            if token is not None:
                await self.accounts.refund_registration_token(token)
            raise
        await self.uia.finish(result)
        log.info("registered %s", user_id)
        if self.on_email_registered is not None and STAGE_EMAIL in result.completed:
            await self.on_email_registered(user_id)
        response: dict[str, Any] = {"user_id": user_id, "home_server": self.server_name}
        if not req.inhibit_login:
            response.update(
                await self.auth.start_session(
                    user_id, req.device_id, req.initial_device_display_name, refreshable=req.refresh_token
                )
            )
        return response

    async def register_from_page(
        self,
        username: str,
        password: str,
        token: str | None,
        client: str = "",
        *,
        accepted_terms: bool = False,
        terms_version: str | None = None,
    ) -> str:
        """A registration from a web page (the OAuth 2.0 API's `prompt=create`): the checks
        of POST /register, with the registration token (when the server requires one) given
        at once instead of through user-interactive auth, and the server's terms (if any)
        accepted by a ticked box (`accepted_terms`) on a page that showed `terms_version`
        (refused if the server's is another now). Returns the new user ID."""
        self.limiter.check(client)
        self._require_open()
        await self.check_username(username)
        req = RegistrationRequest.from_json({"username": username, "password": password})
        if not password:
            raise missing_param("password")
        terms = self.terms
        if terms is not None and not accepted_terms:
            raise MatrixError(400, Codes.MISSING_PARAM, "Accept the terms to create an account")
        if terms is not None and terms_version != terms.version:
            raise MatrixError(
                400, Codes.INVALID_PARAM, "The terms have changed: review the new version and accept it"
            )
        if self.config.registration.require_email:
            # The page has no email stage; the account pages link here only when this is off.
            raise forbidden("This server requires an email address: register in a Matrix client")
        if self.config.registration.requires_token:
            if not token or not await self.accounts.consume_registration_token(token, self.clock.time_ms()):
                raise MatrixError(401, Codes.UNAUTHORIZED, "The registration token is invalid or used up")
        try:
            consent = terms.version if terms is not None else None
            user_id = await self._create_user(req, await self.passwords.hash(password), consent=consent)
        except BaseException:
            if token and self.config.registration.requires_token:
                await self.accounts.refund_registration_token(token)
            raise
        log.info("registered %s through the OAuth sign-in page", user_id)
        return user_id

    async def _guest_to_upgrade(self, token: str, username: str | None) -> str:
        """The guest account a registration with `guest_access_token` turns into a full one."""
        if username is None:
            raise missing_param("username (the guest's, to upgrade a guest account)")
        owner = await self.auth.token_owner(token)
        if owner is None or not owner.is_guest or owner.user_id != f"@{username.lower()}:{self.server_name}":
            raise forbidden("Cannot register taken user ID without valid guest credentials for that user")
        return owner.user_id

    async def _new_account(
        self,
        req: RegistrationRequest,
        result: UIAResult,
        flows: list[Flow],
        stage_params: dict[str, Any] | None,
    ) -> str:
        """The account a completed registration session creates (or the guest it upgrades),
        with the address its email stage proved and the version of the terms it accepted
        (the one presented to it: the session's, not necessarily the one configured now)."""
        upgrading = result.client_params.get(_UPGRADING)
        email_session = result.threepid_session if STAGE_EMAIL in result.completed else None
        consent = result.terms_version if STAGE_TERMS in result.completed else None
        try:
            if isinstance(upgrading, str):
                return await self._upgrade_guest(upgrading, result.password_hash, email_session, consent)
            return await self._create_user(req, result.password_hash, email_session, consent)
        except ThreepidUnavailable as e:
            if e.in_use:
                raise MatrixError(400, Codes.THREEPID_IN_USE, "Email is already in use") from None
            # Used by another registration meanwhile, or expired: the address is to be proven again.
            await self.uia.reject_stage(
                result, STAGE_EMAIL, flows, Codes.THREEPID_AUTH_FAILED, NO_SESSION, stage_params
            )

    async def _upgrade_guest(
        self, user_id: str, password_hash: str | None, email_session: str | None, consent: str | None
    ) -> str:
        if not await self.accounts.upgrade_guest(
            user_id, password_hash, email_session, self.clock.time_ms(), consent
        ):
            raise forbidden("This account is no longer a guest account")
        # Its tokens (the guest's own included) now belong to a full account, on every worker.
        self.auth.invalidate_user(user_id)
        log.info("upgraded guest %s to a full account", user_id)
        return user_id

    async def _register_guest(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if not self.config.registration.allow_guests:
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guest access is disabled")
        # Only the device's name and refresh tokens apply; a guest has no username or password.
        display_name = optional_str(body, "initial_device_display_name")
        refreshable = optional_bool(body, "refresh_token", False)
        for _attempt in range(3):
            try:
                user_id = await create_account(
                    self.accounts,
                    self.passwords,
                    self.server_name,
                    guest_localpart(),
                    None,
                    self.clock.time_ms(),
                    guest=True,
                )
                break
            except MatrixError as e:
                if e.errcode != Codes.USER_IN_USE:
                    raise
        else:
            raise MatrixError(500, Codes.UNKNOWN, "Could not allocate a guest account")
        log.info("registered guest %s", user_id)
        session = await self.auth.start_session(user_id, None, display_name, refreshable=refreshable)
        return {"user_id": user_id, "home_server": self.server_name, **session}

    async def _create_user(
        self,
        req: RegistrationRequest,
        password_hash: str | None,
        email_session: str | None = None,
        consent: str | None = None,
    ) -> str:
        """`consent`: the version of the terms the user accepted (recorded with the account)."""
        now = self.clock.time_ms()
        if req.username is not None:
            return await create_account(
                self.accounts,
                self.passwords,
                self.server_name,
                req.username,
                None,
                now,
                password_hash=password_hash,
                email_session=email_session,
                consent_version=consent,
            )
        while True:
            # A random name; retried on the (astronomically unlikely) collision.
            candidate = "u" + secrets.token_hex(6)
            try:
                return await create_account(
                    self.accounts,
                    self.passwords,
                    self.server_name,
                    candidate,
                    None,
                    now,
                    password_hash=password_hash,
                    email_session=email_session,
                    consent_version=consent,
                )
            except MatrixError as e:
                if e.errcode != Codes.USER_IN_USE:
                    raise


class LoginHandler:
    LOGIN_TYPES = ("m.login.password", "m.login.token")

    def __init__(
        self,
        config: Config,
        accounts: AccountStore,
        passwords: PasswordHasher,
        auth: AuthHandler,
        clock: Clock,
        login_tokens: ExpiringTokens,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.passwords = passwords
        self.auth = auth
        self.clock = clock
        self.login_tokens = login_tokens
        self.limiter = login_limiter(config, clock)
        # Email is configured: users may name themselves by address (m.id.thirdparty).
        self.threepids: ThreepidLookup | None = None

    def flows(self) -> list[dict[str, Any]]:
        # `get_login_token`: a signed-in device can issue tokens (POST /login/get_token).
        return [{"type": "m.login.password"}, {"type": "m.login.token", "get_login_token": True}]

    async def issue_login_token(self, user_id: str) -> dict[str, Any]:
        """A single-use token for `m.login.token` (the caller has passed UIA)."""
        token = generate_token("slt")
        now = self.clock.time_ms()
        await self.login_tokens.add(hash_token(token), user_id, now + LOGIN_TOKEN_LIFETIME_MS, now)
        return {"login_token": token, "expires_in_ms": LOGIN_TOKEN_LIFETIME_MS}

    async def _token_user(self, body: Mapping[str, Any]) -> str:
        return await self.consume_login_token(require_str(body, "token"))

    async def consume_login_token(self, token: str) -> str:
        """The user a single-use login token signs in (403 if invalid, used or expired)."""
        user_id = await self.login_tokens.consume(hash_token(token), self.clock.time_ms())
        if user_id is None:
            raise MatrixError(403, Codes.FORBIDDEN, "Invalid or expired login token")
        user = await self.accounts.get_user(user_id)
        if user is None or user["deactivated"]:
            raise MatrixError(403, Codes.USER_DEACTIVATED, "This account has been deactivated")
        return user_id

    async def login(self, body: Mapping[str, Any], client: str = "") -> dict[str, Any]:
        """Handle one POST /login; `client` (the caller's address) keys the rate limit."""
        self.limiter.check(client)
        login_type = body.get("type")
        if login_type is None:
            raise missing_param("type")
        if login_type not in self.LOGIN_TYPES:
            raise MatrixError(400, Codes.UNKNOWN, "Unknown login type")
        device_id = optional_str(body, "device_id")
        display_name = optional_str(body, "initial_device_display_name")
        refreshable = optional_bool(body, "refresh_token", False)
        server_name = self.config.server_name
        if login_type == "m.login.token":
            user_id = await self._token_user(body)
        else:
            claimed = await identify_user(body, server_name, self.threepids)
            try:
                user_id = await check_password_login(
                    self.accounts, self.passwords, server_name, claimed, body.get("password")
                )
            except MatrixError as e:
                if e.status == 403:
                    log.info("failed login for %r: %s", claimed, e.errcode)
                raise
        moderation = await self.accounts.get_moderation(user_id)
        if moderation is not None and moderation["locked"]:
            # Only after the password: the lock is not told to whoever merely names the account.
            raise MatrixError(401, Codes.USER_LOCKED, "This account has been locked", soft_logout=True)
        session = await self.auth.start_session(user_id, device_id, display_name, refreshable=refreshable)
        return {
            "user_id": user_id,
            **session,
            "home_server": server_name,
            "well_known": {"m.homeserver": {"base_url": self.config.baseurl + "/"}},
        }

    async def refresh(
        self, body: Mapping[str, Any], client: str = "", oauth: OAuthStore | None = None
    ) -> dict[str, Any]:
        """Handle one POST /refresh (rate limited like /login, by the caller's address).
        A session from the OAuth 2.0 API renews its tokens at the token endpoint only
        (`oauth`), which checks the client and keeps the OAuth lifetime."""
        self.limiter.check(client)
        token = require_str(body, "refresh_token")
        if oauth is not None:
            info = await self.accounts.get_refresh_token(hash_token(token))
            if info is not None and await oauth.session(info.user_id, info.device_id) is not None:
                raise MatrixError(
                    401,
                    Codes.UNKNOWN_TOKEN,
                    "Renew this session's tokens at the OAuth 2.0 token endpoint",
                    soft_logout=False,
                )
        return await self.auth.refresh(token)


class AccountHandler:
    """Password change and deactivation (both behind UIA with the account's password)."""

    def __init__(
        self,
        accounts: AccountStore,
        passwords: PasswordHasher,
        auth: AuthHandler,
        uia: UserInteractiveAuth,
        devices: DeviceHandler,
        events: EventStore,
        creator: EventCreator,
        limiter: RateLimiter,
    ) -> None:
        self.accounts = accounts
        self.passwords = passwords
        self.auth = auth
        self.uia = uia
        self.devices = devices
        self.deactivator = Deactivator(accounts, devices, auth, events, creator)
        # Without an access token the password stage is a login in disguise: limit it like /login.
        self.limiter = limiter

    async def change_password(
        self, requester: Requester | None, body: Mapping[str, Any], client: str = ""
    ) -> None:
        if requester is None:
            self.limiter.check(client)
        new_password = require_str(body, "new_password")
        validate_password(new_password)
        logout_devices = optional_bool(body, "logout_devices", True)
        result = await self.uia.check(
            operation="POST /account/password",
            flows=self.uia.password_flows(requester is not None),
            auth=body.get("auth"),
            requester=requester.user_id if requester else None,
        )
        user_id = requester.user_id if requester else result.user_id
        assert user_id is not None  # the password stage identified the user
        await self.accounts.set_password_hash(user_id, await self.passwords.hash(new_password))
        await self.uia.finish(result)
        if logout_devices:
            # The session that asked for the change stays logged in.
            await self.devices.delete_other_devices(user_id, requester.device_id if requester else None)
        log.info("password changed for %s", user_id)

    async def deactivate(
        self, requester: Requester | None, body: Mapping[str, Any], client: str = ""
    ) -> dict[str, Any]:
        if requester is None:
            self.limiter.check(client)
        erase = optional_bool(body, "erase", False)
        optional_str(body, "id_server")
        result = await self.uia.check(
            operation="POST /account/deactivate",
            flows=self.uia.user_flows(),
            auth=body.get("auth"),
            requester=requester.user_id if requester else None,
        )
        user_id = requester.user_id if requester else result.user_id
        assert user_id is not None
        await self.uia.finish(result)
        await self.deactivator.deactivate(user_id, erase=erase)
        # No identity server knows of this server's third-party identifiers.
        return {"id_server_unbind_result": "no-support"}


def whoami(requester: Requester) -> dict[str, Any]:
    out: dict[str, Any] = {"user_id": requester.user_id, "is_guest": requester.is_guest}
    if requester.device_id:  # an application service acting without a device has none
        out["device_id"] = requester.device_id
    return out
