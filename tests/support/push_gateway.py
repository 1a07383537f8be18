"""A push gateway for tests: an aiohttp server on loopback receiving /_matrix/push/v1/notify."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.server import free_port

NOTIFY = "/_matrix/push/v1/notify"


@dataclass
class Gateway:
    url: str
    received: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    # Status codes to answer with first (then 200), and pushkeys to reject.
    failures: list[int] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)
    attempts: int = 0

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        body = await asyncio.wait_for(self.received.get(), timeout)
        notification: dict[str, Any] = body["notification"]
        return notification

    async def nothing(self, wait: float = 0.5) -> None:
        await asyncio.sleep(wait)
        assert self.received.empty(), self.received.get_nowait()


@asynccontextmanager
async def gateway() -> AsyncIterator[Gateway]:
    port = free_port()
    gw = Gateway(f"http://127.0.0.1:{port}{NOTIFY}")

    async def notify(request: web.Request) -> web.Response:
        gw.attempts += 1
        body = await request.json()
        if gw.failures:
            return web.Response(status=gw.failures.pop(0))
        await gw.received.put(body)
        keys = [d["pushkey"] for d in body["notification"]["devices"]]
        return web.json_response({"rejected": [k for k in keys if k in gw.reject]})

    app = web.Application()
    app.router.add_post(NOTIFY, notify)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield gw
    finally:
        await runner.cleanup()
