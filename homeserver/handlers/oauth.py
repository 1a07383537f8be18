"""The OAuth 2.0 API (client-server API, "OAuth 2.0 API"): Sotto is its own authorisation
server. Clients register (homeserver/handlers/oauth_clients.py), send the user's browser
to the authorisation endpoint, where the user signs in (homeserver/api/oauth.py renders the
pages), and exchange the code they get back for an access token and a refresh token.
Devices without a usable browser use the device authorisation grant (RFC 8628) instead.

Tokens are the server's ordinary refreshable tokens (homeserver/handlers/auth.py), so the
rest of the server needs no change; `oauth_sessions` remembers which devices came this way
and their client, for the token endpoint's checks and the `m.oauth` stage of UIA.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from homeserver.config import Config
from homeserver.errors import MatrixError
from homeserver.handlers.auth import AuthHandler, generate_token, hash_token
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.oauth_clients import (
    AUTHORIZATION_CODE,
    DEVICE_CODE,
    REFRESH_TOKEN,
    OAuthError,
    client_id_for,
    redirect_matches,
    validate_client_metadata,
)
from homeserver.storage.accounts import AccountStore
from homeserver.storage.oauth import CodeGrant, DeviceGrant, OAuthStore

log = logging.getLogger(__name__)

SCOPE_API = "urn:matrix:client:api:*"
SCOPE_DEVICE = "urn:matrix:client:device:"
# The unstable names (MSC2967) that clients released before v1.15 still ask for.
UNSTABLE_SCOPE_API = "urn:matrix:org.matrix.msc2967.client:api:*"
UNSTABLE_SCOPE_DEVICE = "urn:matrix:org.matrix.msc2967.client:device:"
CODE_LIFETIME_MS = 2 * 60 * 1000
DEVICE_GRANT_LIFETIME_MS = 10 * 60 * 1000
DEVICE_POLL_INTERVAL_S = 5
# A poll this much early still counts as on time (timers and networks jitter).
DEVICE_POLL_LEEWAY_MS = 1000
# How long an approved cross-signing reset stays usable.
RESET_WINDOW_MS = 10 * 60 * 1000
# RFC 6749's scope characters, and RFC 7636's code verifier.
_DEVICE_ID = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,255}")
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")
# User codes are typed by people: no vowels (no words), no look-alikes.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"

ACCOUNT_PATH = "/_sotto/account"
AUTHORIZE_PATH = "/_sotto/oauth2/authorize"
LINK_PATH = "/_sotto/oauth2/link"
REGISTER_PATH = "/_sotto/oauth2/register"
TOKEN_PATH = "/_sotto/oauth2/token"
REVOKE_PATH = "/_sotto/oauth2/revoke"
DEVICE_PATH = "/_sotto/oauth2/device"
# This server's pages that take a user back from single sign-on with a login token and ask
# their own confirmation (api/sso.py sends the browser straight back to them).
SSO_RETURN_PAGES = (AUTHORIZE_PATH, LINK_PATH, ACCOUNT_PATH)
CROSS_SIGNING_RESET = "org.matrix.cross_signing_reset"
DEACTIVATE = "org.matrix.account_deactivate"


@dataclass(frozen=True, slots=True)
class Scope:
    """A requested scope the server understands: the granted string and the device."""

    granted: str
    device_id: str


def parse_scope(raw: str | None) -> Scope:
    """The scope to grant: full API access and exactly one device. Tokens this server does
    not know (`openid`, say) are left out of the grant, as RFC 6749 lets a server do."""
    tokens = (raw or "").split()
    api = [t for t in tokens if t in (SCOPE_API, UNSTABLE_SCOPE_API)]
    devices = [t for t in tokens if t.startswith((SCOPE_DEVICE, UNSTABLE_SCOPE_DEVICE))]
    if not api:
        raise OAuthError("invalid_scope", f"The scope must include {SCOPE_API}")
    if len(devices) != 1:
        raise OAuthError("invalid_scope", "The scope must include exactly one device")
    device_id = devices[0].rpartition(":")[2]
    if not _DEVICE_ID.fullmatch(device_id):
        raise OAuthError("invalid_scope", "The device ID has characters a scope may not have")
    return Scope(" ".join(api + devices), device_id)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A checked request of the authorisation endpoint, ready to show the user."""

    client_id: str
    client: dict[str, Any]
    redirect_uri: str
    response_mode: str
    state: str | None
    scope: Scope
    code_challenge: str
    prompt: str | None

    def client_name(self) -> str:
        return str(self.client.get("client_name") or urlsplit(self.client["client_uri"]).netloc)

    def callback(self, params: dict[str, str]) -> str:
        """The redirect URI with `params` (and the state) in its query or fragment."""
        if self.state is not None:
            params = {**params, "state": self.state}
        if self.response_mode == "fragment":
            return f"{self.redirect_uri}#{urlencode(params)}"
        sep = "&" if urlsplit(self.redirect_uri).query else "?"
        return f"{self.redirect_uri}{sep}{urlencode(params)}"


class RedirectableError(Exception):
    """An authorisation error the client is told about through its redirect URI."""

    def __init__(self, request_url: str, error: OAuthError) -> None:
        super().__init__(error.description)
        self.url = request_url
        self.error = error


class OAuthServer:
    def __init__(
        self,
        config: Config,
        store: OAuthStore,
        accounts: AccountStore,
        auth: AuthHandler,
        devices: DeviceHandler,
    ) -> None:
        self.config = config
        self.store = store
        self.accounts = accounts
        self.auth = auth
        self.devices = devices
        self.clock = auth.clock
        self.lifetime_ms = config.oauth.access_token_lifetime_ms

    def metadata(self) -> dict[str, Any]:
        base = self.config.baseurl
        out: dict[str, Any] = {
            "issuer": base + "/",
            "authorization_endpoint": base + AUTHORIZE_PATH,
            "token_endpoint": base + TOKEN_PATH,
            "registration_endpoint": base + REGISTER_PATH,
            "revocation_endpoint": base + REVOKE_PATH,
            "device_authorization_endpoint": base + DEVICE_PATH,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment"],
            "grant_types_supported": [AUTHORIZATION_CODE, REFRESH_TOKEN, DEVICE_CODE],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": [SCOPE_API],
            "account_management_uri": base + ACCOUNT_PATH,
            "account_management_actions_supported": [
                CROSS_SIGNING_RESET,
                "org.matrix.devices_list",
                "org.matrix.device_view",
                "org.matrix.device_delete",
                DEACTIVATE,
            ],
        }
        registration = self.config.registration
        if registration.enabled and not registration.require_email:  # the page asks for no email
            out["prompt_values_supported"] = ["create"]
        return out

    async def register_client(self, body: Any) -> dict[str, Any]:
        metadata = validate_client_metadata(body)
        client_id = client_id_for(metadata)
        await self.store.add_client(client_id, metadata, self.clock.time_ms())
        return {"client_id": client_id, **metadata}

    async def _client(self, client_id: Any) -> dict[str, Any]:
        client = await self.store.get_client(client_id) if isinstance(client_id, str) else None
        if client is None:
            raise OAuthError("invalid_client", "Unknown client_id", status=401)
        return client

    # The authorisation code grant -------------------------------------------------------

    async def authorization_request(self, query: dict[str, str]) -> AuthorizationRequest:
        """Check the endpoint's parameters. An unknown client or redirect URI raises
        `OAuthError` (shown to the user: the browser must not be sent to an unchecked URI);
        other errors, `RedirectableError` (the client hears of them at its redirect URI)."""
        client_id = query.get("client_id")
        client = await self._client(client_id)
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_matches(client, redirect_uri):
            raise OAuthError("invalid_request", "The redirect_uri is not one the client registered")
        response_mode = query.get(
            "response_mode", "fragment" if redirect_uri.startswith("https:") else "query"
        )
        partial = AuthorizationRequest(
            str(client_id),
            client,
            redirect_uri,
            response_mode if response_mode in ("query", "fragment") else "query",
            query.get("state"),
            Scope("", ""),
            "",
            query.get("prompt"),
        )

        def fail(error: str, description: str) -> RedirectableError:
            return RedirectableError(
                partial.callback({"error": error, "error_description": description}),
                OAuthError(error, description),
            )

        if response_mode not in ("query", "fragment"):
            raise fail("invalid_request", "response_mode must be query or fragment")
        if query.get("response_type") != "code" or AUTHORIZATION_CODE not in client["grant_types"]:
            raise fail("unsupported_response_type", "Only the code response type is supported")
        if query.get("code_challenge_method") != "S256" or not _CHALLENGE.fullmatch(
            query.get("code_challenge", "")
        ):
            raise fail("invalid_request", "PKCE with code_challenge_method S256 is required")
        try:
            scope = parse_scope(query.get("scope"))
        except OAuthError as e:
            raise fail(e.error, e.description) from None
        # `prompt=create` shows the registration form (when registration is open); other
        # values change nothing: the user always signs in.
        return dataclasses.replace(partial, scope=scope, code_challenge=query["code_challenge"])

    async def issue_code(self, request: AuthorizationRequest, user_id: str) -> str:
        """The user approved: the redirect URI with a new code."""
        code = secrets.token_urlsafe(32)
        grant = CodeGrant(
            request.client_id,
            user_id,
            request.scope.device_id,
            request.redirect_uri,
            request.scope.granted,
            request.code_challenge,
            self.clock.time_ms() + CODE_LIFETIME_MS,
        )
        await self.store.add_code(hash_token(code), grant)
        return request.callback({"code": code})

    # The token endpoint -----------------------------------------------------------------

    async def token(self, form: dict[str, str]) -> dict[str, Any]:
        grant_type = form.get("grant_type")
        if grant_type not in (AUTHORIZATION_CODE, REFRESH_TOKEN, DEVICE_CODE):
            raise OAuthError("unsupported_grant_type", f"Unsupported grant_type {grant_type}")
        client_id = form.get("client_id")
        client = await self._client(client_id)
        if grant_type == REFRESH_TOKEN:
            return await self._refresh(form, str(client_id))
        if grant_type not in client["grant_types"]:
            raise OAuthError("unauthorized_client", f"The client did not register the {grant_type} grant")
        if grant_type == AUTHORIZATION_CODE:
            return await self._exchange_code(form, str(client_id), client)
        return await self._device_token(form, str(client_id), client)

    async def _exchange_code(
        self, form: dict[str, str], client_id: str, client: dict[str, Any]
    ) -> dict[str, Any]:
        invalid = OAuthError("invalid_grant", "The code is invalid, expired or already used")
        code, verifier = form.get("code"), form.get("code_verifier", "")
        if not code:
            raise OAuthError("invalid_request", "code is required")
        grant = await self.store.take_code(hash_token(code), self.clock.time_ms())
        if grant is None or grant.client_id != client_id or grant.redirect_uri != form.get("redirect_uri"):
            raise invalid
        if not _VERIFIER.fullmatch(verifier) or not secrets.compare_digest(
            s256(verifier), grant.code_challenge
        ):
            raise OAuthError("invalid_grant", "The code_verifier does not match the code_challenge")
        return await self._issue(grant.user_id, grant.device_id, client_id, client, grant.scope)

    async def _issue(
        self, user_id: str, device_id: str, client_id: str, client: dict[str, Any], scope: str
    ) -> dict[str, Any]:
        user = await self.accounts.get_user(user_id)
        if user is None or user["deactivated"] or user.get("locked"):
            raise OAuthError("invalid_grant", "The account can no longer sign in")
        name = client.get("client_name") or urlsplit(client["client_uri"]).netloc
        session = await self.auth.start_session(
            user_id, device_id, str(name), refreshable=True, lifetime_ms=self.lifetime_ms
        )
        await self.store.add_session(user_id, device_id, client_id, scope, self.clock.time_ms())
        return self._token_response(session, scope)

    def _token_response(self, session: dict[str, Any], scope: str) -> dict[str, Any]:
        return {
            "access_token": session["access_token"],
            "token_type": "Bearer",
            "expires_in": session["expires_in_ms"] // 1000,
            "refresh_token": session["refresh_token"],
            "scope": scope,
        }

    async def _refresh(self, form: dict[str, str], client_id: str) -> dict[str, Any]:
        invalid = OAuthError("invalid_grant", "The refresh token is invalid, expired or revoked")
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            raise OAuthError("invalid_request", "refresh_token is required")
        refresh_hash = hash_token(refresh_token)
        info = await self.accounts.get_refresh_token(refresh_hash)
        if info is None:
            await self._end_if_replayed(refresh_hash)
            raise invalid
        session = await self.store.session(info.user_id, info.device_id)
        if session is None or session.client_id != client_id:
            raise invalid
        try:
            fresh = await self.auth.refresh(refresh_token, lifetime_ms=self.lifetime_ms)
        except MatrixError:
            raise invalid from None
        return self._token_response(fresh, session.scope)

    async def _end_if_replayed(self, refresh_hash: str) -> None:
        """A refresh token whose successor is already in use came back: someone else holds
        the session too (a stolen token, or a client that forked). The spec says to consider
        the session compromised, so it ends."""
        spent = await self.accounts.spent_refresh(refresh_hash)
        if spent is not None and await self.store.session(*spent) is not None:
            log.warning("a spent refresh token was used again: ending the session of device %s", spent[1])
            await self.devices.delete_devices(spent[0], [spent[1]])

    # Revocation (RFC 7009) --------------------------------------------------------------

    async def revoke(self, form: dict[str, str]) -> None:
        """End the session of an access or refresh token: its device, and both tokens.
        Unknown tokens are not an error (RFC 7009); another client's token is revoked too,
        as the spec asks (it helps scanners that find leaked tokens)."""
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        hint = form.get("token_type_hint")
        if hint not in (None, "access_token", "refresh_token"):
            raise OAuthError("unsupported_token_type", f"Unsupported token_type_hint {hint}")
        th = hash_token(token)
        owner = await self.accounts.get_token(th)
        found = (owner.user_id, owner.device_id) if owner is not None else None
        if found is None:
            info = await self.accounts.get_refresh_token(th)
            found = (info.user_id, info.device_id) if info is not None else None
        if found is not None:
            user_id, device_id = found
            await self.devices.delete_devices(user_id, [device_id])

    # The device authorisation grant (RFC 8628) ------------------------------------------

    async def start_device_grant(self, form: dict[str, str]) -> dict[str, Any]:
        client_id = form.get("client_id")
        client = await self._client(client_id)
        if DEVICE_CODE not in client["grant_types"]:
            raise OAuthError("unauthorized_client", "The client did not register the device code grant")
        scope = parse_scope(form.get("scope"))
        device_code = generate_token("sdc")
        user_code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
        user_code = f"{user_code[:4]}-{user_code[4:]}"
        now = self.clock.time_ms()
        grant = DeviceGrant(
            hash_token(device_code),
            user_code,
            str(client_id),
            scope.device_id,
            scope.granted,
            now + DEVICE_GRANT_LIFETIME_MS,
            None,
            False,
        )
        await self.store.add_device_grant(grant, now)
        link = self.config.baseurl + LINK_PATH
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": link,
            "verification_uri_complete": f"{link}?{urlencode({'user_code': user_code})}",
            "expires_in": DEVICE_GRANT_LIFETIME_MS // 1000,
            "interval": DEVICE_POLL_INTERVAL_S,
        }

    async def pending_device_grant(self, user_code: str) -> tuple[DeviceGrant, dict[str, Any]] | None:
        """A grant the user may still approve, and its client's metadata."""
        grant = await self.store.device_grant(user_code=normalise_user_code(user_code))
        if grant is None or grant.expires_ts <= self.clock.time_ms() or grant.user_id or grant.denied:
            return None
        client = await self.store.get_client(grant.client_id)
        return None if client is None else (grant, client)

    async def decide_device_grant(self, user_code: str, user_id: str | None) -> bool:
        return await self.store.decide_device_grant(
            normalise_user_code(user_code), user_id, self.clock.time_ms()
        )

    async def _device_token(
        self, form: dict[str, str], client_id: str, client: dict[str, Any]
    ) -> dict[str, Any]:
        device_code = form.get("device_code")
        if not device_code:
            raise OAuthError("invalid_request", "device_code is required")
        th = hash_token(device_code)
        grant = await self.store.device_grant(device_code_hash=th)
        if grant is None or grant.client_id != client_id:
            raise OAuthError("invalid_grant", "Unknown device_code")
        if grant.denied:
            await self.store.take_device_grant(th)
            raise OAuthError("access_denied", "The user refused")
        if grant.user_id is None:
            now = self.clock.time_ms()
            if grant.expires_ts <= now:
                raise OAuthError("expired_token", "The device code expired")
            interval = await self.store.note_poll(th, now, DEVICE_POLL_LEEWAY_MS)
            if interval is not None:
                raise OAuthError("slow_down", f"Poll at most every {interval} seconds")
            raise OAuthError("authorization_pending", "The user has not approved yet")
        if not await self.store.take_device_grant(th):
            raise OAuthError("invalid_grant", "The device code was already used")
        return await self._issue(grant.user_id, grant.device_id, client_id, client, grant.scope)

    # The m.oauth stage of UIA -----------------------------------------------------------

    def reset_url(self) -> str:
        return f"{self.config.baseurl}{ACCOUNT_PATH}?{urlencode({'action': CROSS_SIGNING_RESET})}"

    async def allow_cross_signing_reset(self, user_id: str) -> None:
        await self.store.allow_cross_signing_reset(user_id, self.clock.time_ms() + RESET_WINDOW_MS)

    async def take_reset_approval(self, user_id: str) -> bool:
        return await self.store.take_cross_signing_reset(user_id, self.clock.time_ms())

    async def is_oauth_session(self, user_id: str, device_id: str) -> bool:
        return await self.store.session(user_id, device_id) is not None


def normalise_user_code(user_code: str) -> str:
    """Codes typed by people: case and dashes do not matter."""
    letters = "".join(c for c in user_code.upper() if c.isalnum())
    return f"{letters[:4]}-{letters[4:]}"
