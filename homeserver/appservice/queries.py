"""Asking application services about users and aliases this server does not know
(`GET /_matrix/app/v1/users/{userId}` and `/_matrix/app/v1/rooms/{roomAlias}`).

A bridge creates its users and rooms on demand: when someone invites or looks up a user
in a service's namespace that is not registered, or resolves an alias in one that does
not exist, the service is asked first, and may create the entity before it answers 200.
The caller then looks again. A service that does not answer within QUERY_TIMEOUT_S, or
answers otherwise, leaves the user or alias unknown (the caller's usual 404).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from homeserver.appservice.registration import AppService, AppServices

log = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 10.0


class AppServiceQueries:
    def __init__(self, services: AppServices, server_name: str) -> None:
        self.services = services
        self.local = ":" + server_name

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
            if await self._ask(service, kind, subject):
                return True
        return False

    async def thirdparty(self, service: AppService, path: str, params: dict[str, str]) -> Any:
        """A service's answer to a third-party lookup (`/_matrix/app/v1/thirdparty/{path}`),
        or None if it failed."""
        url = f"{service.url}/_matrix/app/v1/thirdparty/{path}"
        headers = {"Authorization": f"Bearer {service.hs_token}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT_S)) as session,
                session.get(url, headers=headers, params=params) as resp,
            ):
                if not 200 <= resp.status < 300:
                    return None
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("application service %s: third-party lookup failed: %s", service.id, type(e).__name__)
            return None

    async def _ask(self, service: AppService, kind: str, subject: str) -> bool:
        url = f"{service.url}/_matrix/app/v1/{kind}/{quote(subject, safe='')}"
        headers = {"Authorization": f"Bearer {service.hs_token}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT_S)) as session,
                session.get(url, headers=headers) as resp,
            ):
                await resp.read()
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("application service %s: %s query failed: %s", service.id, kind, type(e).__name__)
            return False
        log.info("application service %s answered a %s query: %s", service.id, kind, "yes" if ok else "no")
        return ok
