"""Keeps an OAuth-logged-in bot's access token fresh (they expire after minutes).

`SottoAsyncClient` asks `before_request()` before every Client-Server request, and
`after_soft_logout(token)` when one came back 401 `M_UNKNOWN_TOKEN` with `soft_logout: true`
(then retries it once). A refresh happens when the token is within `margin` of expiring, or
after such a 401; the new pair goes to the nio client and to the store (oauth.json first, then
credentials.json, so a crash in between leaves a refresh token that still works).

Invariant: one refresh at a time. Two concurrent refreshes would spend the same refresh token
twice, which the spec lets the server treat as a stolen session (Sotto then ends it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import aiohttp

from clients.oauth import OAuthError, OAuthSession, refresh
from clients.store import OAUTH_FILE, StoreDir

log = logging.getLogger(__name__)

MAX_MARGIN_S = 60.0


class TokenRefreshError(Exception):
    """The session cannot be renewed (refresh token refused): the bot must log in again."""


class TokenRefresher:
    def __init__(
        self, session: OAuthSession, store: StoreDir, clock: Callable[[], float] = time.time
    ) -> None:
        self.session = session
        self.store = store
        self.clock = clock
        self._lock = asyncio.Lock()

    @property
    def access_token(self) -> str:
        return self.session.access_token

    def _due(self) -> bool:
        expires_at = self.session.expires_at
        if expires_at is None:
            return False
        lifetime = self.session.lifetime or MAX_MARGIN_S * 3
        # A third of the lifetime, at most a minute: 10 s tokens renew 3.3 s early, 5 min ones 60 s.
        return self.clock() >= expires_at - min(MAX_MARGIN_S, lifetime / 3)

    async def before_request(self) -> None:
        if self._due():
            async with self._lock:
                if self._due():  # not renewed by whoever held the lock
                    await self._refresh(fatal=False)

    async def after_soft_logout(self, token_used: str) -> bool:
        """The server called `token_used` expired; True when a retry with a new token makes sense."""
        async with self._lock:
            if self.session.access_token != token_used:
                return True  # renewed meanwhile
            return await self._refresh(fatal=True)

    async def _refresh(self, fatal: bool) -> bool:
        try:
            async with aiohttp.ClientSession() as http:
                await refresh(http, self.session, self.clock)
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                raise TokenRefreshError(f"the session ended ({exc}): log the bot in again") from None
            log.warning("could not renew the access token: %s", exc)
            if fatal:
                raise TokenRefreshError(str(exc)) from None
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not renew the access token: %s", type(exc).__name__)
            if fatal:
                raise TokenRefreshError("the token endpoint is unreachable") from None
            return False
        self.store.write_json(OAUTH_FILE, self.session.to_json())
        creds = self.store.load_credentials()
        if creds is not None:
            self.store.save_credentials(replace(creds, access_token=self.session.access_token))
        log.info("renewed the access token (device %s)", self.session.device_id)
        return True
