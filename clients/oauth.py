"""Logging a bot in through the spec's OAuth 2.0 API, with the device authorisation grant
(RFC 8628): for servers where accounts sign in in the browser only (Synapse with MAS, Sotto with
`oauth.enabled`).

    metadata = await discover(http, homeserver)              # GET /_matrix/client/v1/auth_metadata
    session = await device_login(http, metadata, show)       # register, ask, poll the token endpoint

`device_login` registers the bot as a native client (dynamic registration, RFC 7591: no redirect
URIs are needed for this grant), asks for a code bound to a new device ID
(`urn:matrix:client:device:<id>`), hands the link and the code to `show` (the operator approves
on any device with a browser), and polls the token endpoint as RFC 8628 §3.5 says: every
`interval` seconds, five more after `slow_down`, until tokens, `access_denied` or
`expired_token`. `refresh` trades the refresh token for a new pair.

Tokens never reach logs or exception messages; `OAuthSession.__repr__` leaves them out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_GRANT = "refresh_token"
METADATA_PATH = "/_matrix/client/v1/auth_metadata"
DEFAULT_CLIENT_URI = "https://sotto.invalid/"  # RFC 6761: a name that is nobody's host
SLOW_DOWN_STEP_S = 5  # RFC 8628 §3.5
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)


class OAuthError(Exception):
    """The login or a refresh failed; the message says why (never a token)."""

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message)
        self.error = error  # the OAuth error code, when the server gave one (`invalid_grant`, …)


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """What the operator needs to approve the login."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int


@dataclass(slots=True)
class OAuthSession:
    """A signed-in OAuth session: the tokens and where to renew them."""

    client_id: str
    token_endpoint: str
    device_id: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float | None  # wall-clock seconds; None: the access token does not expire
    lifetime: float | None = None  # seconds the last access token was given for

    def to_json(self) -> dict[str, Any]:
        """What the store keeps in oauth.json (the access token lives in credentials.json)."""
        return {
            "client_id": self.client_id,
            "token_endpoint": self.token_endpoint,
            "device_id": self.device_id,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "lifetime": self.lifetime,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], access_token: str) -> OAuthSession:
        expires_at, lifetime = data.get("expires_at"), data.get("lifetime")
        return cls(
            client_id=str(data["client_id"]),
            token_endpoint=str(data["token_endpoint"]),
            device_id=str(data["device_id"]),
            access_token=access_token,
            refresh_token=str(data["refresh_token"]),
            expires_at=float(expires_at) if expires_at is not None else None,
            lifetime=float(lifetime) if lifetime is not None else None,
        )

    def update(self, tokens: dict[str, Any], now: float) -> None:
        access, refresh, expires_in = (
            tokens.get("access_token"),
            tokens.get("refresh_token"),
            tokens.get("expires_in"),
        )
        if not isinstance(access, str) or not access:
            raise OAuthError("the token endpoint answered without an access token")
        self.access_token = access
        if isinstance(refresh, str) and refresh:
            self.refresh_token = refresh  # servers may keep the old one (RFC 6749 §6)
        self.lifetime = float(expires_in) if isinstance(expires_in, int | float) else None
        self.expires_at = now + self.lifetime if self.lifetime is not None else None


def new_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return body if isinstance(body, dict) else {}


async def discover(http: aiohttp.ClientSession, homeserver: str) -> dict[str, Any] | None:
    """The server's OAuth 2.0 metadata, or None when it does not offer the OAuth 2.0 API."""
    async with http.get(homeserver.rstrip("/") + METADATA_PATH, timeout=HTTP_TIMEOUT) as resp:
        if resp.status == 404:
            return None
        body = await _json(resp)
        if resp.status != 200:
            raise OAuthError(f"{METADATA_PATH}: HTTP {resp.status} {body.get('errcode', '')}")
    for name in ("token_endpoint", "registration_endpoint", "device_authorization_endpoint"):
        if not isinstance(body.get(name), str):
            raise OAuthError(f"the server's OAuth 2.0 metadata has no {name} (no device login there)")
    return body


async def register_client(
    http: aiohttp.ClientSession, metadata: dict[str, Any], client_name: str, client_uri: str
) -> str:
    """Dynamic client registration as a native app using the device grant; the client ID."""
    body = {
        "client_name": client_name,
        "client_uri": client_uri,
        "application_type": "native",
        "grant_types": [DEVICE_GRANT, REFRESH_GRANT],
        "response_types": [],
        "token_endpoint_auth_method": "none",
    }
    async with http.post(metadata["registration_endpoint"], json=body, timeout=HTTP_TIMEOUT) as resp:
        answer = await _json(resp)
        if resp.status not in (200, 201) or not isinstance(answer.get("client_id"), str):
            raise OAuthError(
                f"client registration failed: HTTP {resp.status} {answer.get('error', '')} "
                f"{answer.get('error_description', '')}".rstrip()
            )
    return str(answer["client_id"])


async def _token_request(
    http: aiohttp.ClientSession, endpoint: str, form: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(endpoint, data=form, timeout=HTTP_TIMEOUT) as resp:
        return resp.status, await _json(resp)


async def device_login(
    http: aiohttp.ClientSession,
    metadata: dict[str, Any],
    show: Callable[[DeviceCode], Awaitable[None]],
    *,
    client_name: str = "sotto-bot",
    client_uri: str = DEFAULT_CLIENT_URI,
    device_id: str | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> OAuthSession:
    """Register, ask for a device code, show it, and poll until the operator decides."""
    client_id = await register_client(http, metadata, client_name, client_uri)
    device_id = device_id or new_device_id()
    form = {"client_id": client_id, "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{device_id}"}
    async with http.post(metadata["device_authorization_endpoint"], data=form, timeout=HTTP_TIMEOUT) as resp:
        grant = await _json(resp)
        if resp.status != 200 or not all(
            isinstance(grant.get(k), str) for k in ("device_code", "user_code", "verification_uri")
        ):
            raise OAuthError(
                f"the device authorisation request failed: HTTP {resp.status} {grant.get('error', '')}"
            )
    expires_in = int(grant.get("expires_in", 600))
    complete = grant.get("verification_uri_complete")
    await show(
        DeviceCode(
            grant["user_code"],
            grant["verification_uri"],
            complete if isinstance(complete, str) else None,
            expires_in,
        )
    )
    interval = max(1, int(grant.get("interval", 5)))
    deadline = clock() + expires_in
    poll = {"grant_type": DEVICE_GRANT, "device_code": grant["device_code"], "client_id": client_id}
    while True:
        if clock() > deadline:
            raise OAuthError("the code expired before anyone approved the login", "expired_token")
        await sleep(interval)
        status, tokens = await _token_request(http, metadata["token_endpoint"], poll)
        error = tokens.get("error")
        if status == 200:
            break
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP_S
            continue
        if error == "access_denied":
            raise OAuthError("the login was refused at the approval page", "access_denied")
        if error == "expired_token":
            raise OAuthError("the code expired before anyone approved the login", "expired_token")
        raise OAuthError(
            f"the token endpoint refused the login: HTTP {status} {error or ''}".rstrip(), str(error)
        )
    session = OAuthSession(client_id, metadata["token_endpoint"], device_id, "", "", None)
    session.update(tokens, clock())
    if not session.refresh_token:
        log.warning("the server gave no refresh token: the bot must log in again when its token expires")
    return session


async def refresh(
    http: aiohttp.ClientSession, session: OAuthSession, clock: Callable[[], float] = time.time
) -> None:
    """Trade the refresh token for a new pair, in place."""
    form = {
        "grant_type": REFRESH_GRANT,
        "refresh_token": session.refresh_token,
        "client_id": session.client_id,
    }
    status, tokens = await _token_request(http, session.token_endpoint, form)
    if status != 200:
        error = str(tokens.get("error", ""))
        raise OAuthError(f"the token refresh failed: HTTP {status} {error}".rstrip(), error)
    session.update(tokens, clock())
