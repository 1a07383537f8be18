"""`sotto-bot login --oauth`: the device authorisation grant, then the store is written.

Asks `clients.oauth` for a session, learns the account from `/account/whoami`, and saves the
refresh side (oauth.json) before the credentials, as `clients.token_refresh` does. The bot then
connects from the store like after a password login, with its token renewed as it goes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from clients.oauth import (
    DEFAULT_CLIENT_URI,
    HTTP_TIMEOUT,
    DeviceCode,
    OAuthError,
    OAuthSession,
    device_login,
    discover,
)
from clients.store import OAUTH_FILE, Credentials, StoreDir


async def whoami(http: aiohttp.ClientSession, homeserver: str, access_token: str) -> tuple[str, str]:
    url = homeserver.rstrip("/") + "/_matrix/client/v3/account/whoami"
    headers = {"Authorization": f"Bearer {access_token}"}
    async with http.get(url, headers=headers, timeout=HTTP_TIMEOUT) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200 or not isinstance(body, dict):
            raise OAuthError(f"/account/whoami refused the new token: HTTP {resp.status}")
    user_id, device_id = body.get("user_id"), body.get("device_id")
    if not (isinstance(user_id, str) and isinstance(device_id, str)):
        raise OAuthError("/account/whoami gave no user or device ID")
    return user_id, device_id


async def login_with_oauth(
    store: StoreDir,
    homeserver: str,
    show: Callable[[DeviceCode], Awaitable[None]],
    *,
    expected_user: str | None = None,
    client_name: str = "sotto-bot",
    client_uri: str | None = None,
) -> Credentials:
    """Log in through the browser of whoever approves; writes oauth.json and credentials.json."""
    homeserver = homeserver.rstrip("/")
    async with aiohttp.ClientSession() as http:
        metadata = await discover(http, homeserver)
        if metadata is None:
            raise OAuthError(f"{homeserver} does not offer the OAuth 2.0 API: log in with a password")
        session: OAuthSession = await device_login(
            http, metadata, show, client_name=client_name, client_uri=client_uri or DEFAULT_CLIENT_URI
        )
        user_id, device_id = await whoami(http, homeserver, session.access_token)
    if device_id != session.device_id:
        raise OAuthError(f"the server gave device {device_id}, not the {session.device_id} asked for")
    if expected_user and expected_user != user_id:
        raise OAuthError(f"the login was approved for {user_id}, not {expected_user}")
    creds = Credentials(homeserver, user_id, device_id, session.access_token)
    store.write_json(OAUTH_FILE, session.to_json())
    store.save_credentials(creds)
    return creds
