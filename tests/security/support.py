"""Helpers for the security tests: raw requests that also return headers, and a fake clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp

from homeserver.clock import Clock
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

T = TypeVar("T")


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


class ThreadedServer:
    """A Sotto server on its own event loop in a background thread, for synchronous tests
    (schemathesis drives `requests`). `run(coro)` runs setup code on the server's loop."""

    def __init__(self, tmp_path: str, **overrides: Any) -> None:
        self.tmp_path = tmp_path
        self.overrides = overrides
        self.loop = asyncio.new_event_loop()
        self.server: RunningServer | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="sotto-test-server", daemon=True)
        self._error: BaseException | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            self._stop = asyncio.Event()
            async with run_server(self.tmp_path, **self.overrides) as srv:
                self.server = srv
                self._ready.set()
                await self._stop.wait()
        except BaseException as e:
            self._error = e
            self._ready.set()

    def __enter__(self) -> RunningServer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or self.server is None:
            raise RuntimeError("test server did not start") from self._error
        return self.server

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)
