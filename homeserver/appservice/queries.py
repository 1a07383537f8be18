"""Requests to application services: the one HTTP client (`call`, a shared session and the
service's `hs_token`) behind transactions, pings, third-party lookups and the queries
about users and aliases this server does not know (`GET /_matrix/app/v1/users/{userId}`
and `/_matrix/app/v1/rooms/{roomAlias}`).

A bridge creates its users and rooms on demand: when someone invites or looks up a user
in a service's namespace that is not registered, or resolves an alias in one that does
not exist, the service is asked first, and may create the entity before it answers 200.
The caller then looks again. A service that does not answer within QUERY_TIMEOUT_S, or
answers otherwise, leaves the user or alias unknown (the caller's usual 404).

A background service (start/stop): the session is closed at shutdown.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from homeserver import jsonutil
from homeserver.appservice.registration import AppService, AppServices
from homeserver.storage.accounts import AccountStore
from homeserver.tracing import DISABLED, Tracing, endpoint_of

log = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 10.0
# The service's answer is read up to this much (transactions and queries answer `{}`).
MAX_ANSWER_BYTES = 1024 * 1024


class AppServiceQueries:
    def __init__(self, services: AppServices, server_name: str, accounts: AccountStore) -> None:
        self.services = services
        self.local = ":" + server_name
        self.accounts = accounts
        self._session: aiohttp.ClientSession | None = None
        self.tracing: Tracing = DISABLED

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        service: AppService,
        method: str,
        path: str,
        *,
        timeout: float,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> tuple[int, bytes]:
        """(status, the answer's first MAX_ANSWER_BYTES) of a request to the service under
        its `hs_token`; raises aiohttp.ClientError or TimeoutError if it was not answered."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {service.hs_token}"}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else jsonutil.dumpb(body)
            headers["Content-Type"] = "application/json"
        endpoint = endpoint_of(path)
        attributes = {
            "http.request.method": method,
            "url.template": endpoint,
            "sotto.appservice.id": service.id,
        }
        with self.tracing.span(f"{method} {endpoint}", attributes, client=True, root=True) as span:
            self.tracing.inject(headers)
            async with self._session.request(
                method,
                f"{service.url}{path}",
                headers=headers,
                params=params,
                data=data,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                if span is not None:
                    span.set_attribute("http.response.status_code", resp.status)
                return resp.status, await resp.content.read(MAX_ANSWER_BYTES)

    async def user_exists(self, user_id: str) -> bool:
        """Whether a local user exists, once the services covering the ID have been asked."""
        if await self.accounts.user_exists(user_id):
            return True
        return await self.user(user_id) and await self.accounts.user_exists(user_id)

    async def user(self, user_id: str) -> bool:
        """Whether a service that covers `user_id` answered 200 (it may have registered it)."""
        return await self._any_yes(self.services.user_owners(user_id), "users", user_id)

    async def alias(self, alias: str) -> bool:
        """Whether a service that covers `alias` answered 200 (it may have created it)."""
        return await self._any_yes(self.services.alias_owners(alias), "rooms", alias)

    async def _any_yes(self, services: list[AppService], kind: str, subject: str) -> bool:
        if not subject.endswith(self.local):
            return False
        for service in services:
            path = f"/_matrix/app/v1/{kind}/{quote(subject, safe='')}"
            try:
                status, _ = await self.call(service, "GET", path, timeout=QUERY_TIMEOUT_S)
            except (aiohttp.ClientError, TimeoutError) as e:
                log.warning("application service %s: %s query failed: %s", service.id, kind, type(e).__name__)
                continue
            ok = 200 <= status < 300
            log.info(
                "application service %s answered a %s query: %s", service.id, kind, "yes" if ok else "no"
            )
            if ok:
                return True
        return False

    async def thirdparty(self, service: AppService, path: str, params: dict[str, str]) -> Any:
        """A service's answer to a third-party lookup (`/_matrix/app/v1/thirdparty/{path}`),
        or None if it failed."""
        try:
            status, answer = await self.call(
                service, "GET", f"/_matrix/app/v1/thirdparty/{path}", timeout=QUERY_TIMEOUT_S, params=params
            )
            return jsonutil.loads(answer) if 200 <= status < 300 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("application service %s: third-party lookup failed: %s", service.id, type(e).__name__)
            return None
