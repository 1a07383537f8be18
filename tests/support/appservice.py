"""An application service's side for tests: its registration file, and a bare endpoint
that records the transactions the homeserver pushes to it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import yaml
from aiohttp import web

AS_TOKEN = "as-token-for-tests"
HS_TOKEN = "hs-token-for-tests"


def write_registration(directory: str, port: int, **extra: Any) -> str:
    registration = {
        "id": "test-bridge",
        "url": f"http://127.0.0.1:{port}",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "_bridge_bot",
        "namespaces": {
            "users": [{"exclusive": True, "regex": "@_bridge_.*"}],
            "aliases": [{"exclusive": True, "regex": "#_bridge_.*"}],
        },
        "rate_limited": False,
        **extra,
    }
    path = os.path.join(directory, "bridge.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(registration, f)
    return path


class Receiver:
    """A bare application service endpoint that records the transactions it takes."""

    def __init__(self, fail_first: int = 0) -> None:
        self.transactions: list[tuple[str, list[dict[str, Any]]]] = []
        self.ephemeral: list[dict[str, Any]] = []
        self.attempts: list[str] = []
        self.fail_first = fail_first
        self.tokens: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        self.tokens.add(request.headers.get("Authorization", ""))
        txn = request.match_info["txn"]
        self.attempts.append(txn)
        if len(self.attempts) <= self.fail_first:
            return web.json_response({"errcode": "M_UNKNOWN"}, status=500)
        body = await request.json()
        if all(t != txn for t, _ in self.transactions):
            self.transactions.append((txn, body["events"]))
            self.ephemeral.extend(body.get("ephemeral", []))
        return web.json_response({})

    def bodies(self, room: str) -> list[str]:
        return [
            e["content"].get("body", "")
            for _, evs in self.transactions
            for e in evs
            if e["room_id"] == room and e["type"] == "m.room.message"
        ]

    @asynccontextmanager
    async def running(self, port: int) -> AsyncIterator[None]:
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield
        finally:
            await runner.cleanup()
