"""Helpers for the security tests: raw requests that also return headers, and a fake clock."""

from __future__ import annotations

from typing import Any

import aiohttp

from homeserver.clock import Clock
from tests.support.http import RawClient


class FakeClock(Clock):
    """A clock the test moves by hand (limiters read `monotonic`)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time_ms(self) -> int:
        return int(self.now * 1000)


async def raw(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    json: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One request; returns (status, parsed JSON body or text, response headers)."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    async with session.request(method, url, json=json, data=data, headers=h, params=params) as resp:
        try:
            body: Any = await resp.json(content_type=None)
        except ValueError:
            body = await resp.text()
        return resp.status, body, dict(resp.headers)


class Client(RawClient):
    """RawClient that also reaches /_synapse/admin paths unprefixed."""

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        if path.startswith("/_synapse"):
            status, body, _ = await raw(
                self.session,
                method,
                self.base_url + path,
                token=self.token,
                json=json,
                params=params,
                data=data,
            )
            return status, body
        return await super().request(method, path, json=json, params=params, data=data)
