"""Rate limits and reconnection, against a small fake homeserver that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from clients import Bot, BotError
from clients.client import retry_after_from_header

ROOM = "!room:fake"


@dataclass
class Fake:
    sync_failures: int = 0
    send_429: list[dict[str, Any]] = field(default_factory=list)  # one answer per 429 to give
    send_times: list[float] = field(default_factory=list)
    token_revoked: bool = False
    sync_drops: int = 0  # connections to drop without an answer (network trouble)


def fake_app(fake: Fake) -> web.Application:
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"user_id": "@bot:fake", "device_id": "DEV"})

    async def sync(request: web.Request) -> web.Response:
        if fake.token_revoked:
            return web.json_response({"errcode": "M_UNKNOWN_TOKEN", "error": "revoked"}, status=401)
        if fake.sync_drops > 0:
            fake.sync_drops -= 1
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError
        if fake.sync_failures > 0:
            fake.sync_failures -= 1
            return web.json_response({"errcode": "M_UNKNOWN", "error": "overloaded"}, status=503)
        if request.query.get("since"):
            await asyncio.sleep(0.1)
        return web.json_response({"next_batch": "s1", "rooms": {"join": {}, "invite": {}, "leave": {}}})

    async def send(request: web.Request) -> web.Response:
        fake.send_times.append(time.monotonic())
        if fake.send_429:
            answer = fake.send_429.pop(0)
            return web.json_response(answer.get("body", {}), status=429, headers=answer.get("headers", {}))
        return web.json_response({"event_id": f"$e{len(fake.send_times)}"})

    app = web.Application()
    app.router.add_get("/_matrix/client/v3/account/whoami", whoami)
    app.router.add_get("/_matrix/client/v3/sync", sync)
    app.router.add_put("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", send)
    return app


@pytest.fixture
async def fake_server() -> AsyncIterator[tuple[Fake, str]]:
    fake = Fake()
    server = TestServer(fake_app(fake), host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def token_bot(base_url: str, tmp_path: Path) -> Bot:
    return Bot(str(tmp_path / "store"), homeserver=base_url, access_token="secret-token", encryption=False)


async def test_limit_exceeded_waits_retry_after_ms_then_succeeds(
    fake_server: tuple[Fake, str], tmp_path: Path
) -> None:
    fake, url = fake_server
    fake.send_429 = [{"body": {"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 400}}]
    bot = token_bot(url, tmp_path)
    await bot.connect()
    try:
        event_id = await bot.send_text(ROOM, "hello")
    finally:
        await bot.close()
    assert event_id == "$e2"
    assert len(fake.send_times) == 2
    assert fake.send_times[1] - fake.send_times[0] >= 0.4


async def test_limit_exceeded_honours_retry_after_header(
    fake_server: tuple[Fake, str], tmp_path: Path
) -> None:
    fake, url = fake_server
    fake.send_429 = [
        {"body": {"errcode": "M_LIMIT_EXCEEDED", "error": "slow down"}, "headers": {"Retry-After": "1"}}
    ]
    bot = token_bot(url, tmp_path)
    await bot.connect()
    try:
        await bot.send_text(ROOM, "hello")
    finally:
        await bot.close()
    # nio alone would sleep its 5 s default; the header says 1 s.
    assert 1.0 <= fake.send_times[1] - fake.send_times[0] < 3.0


def test_retry_after_header_forms() -> None:
    assert retry_after_from_header("3", 0) == 3000
    assert retry_after_from_header(None, 0) is None
    assert retry_after_from_header("garbage", 0) is None
    assert retry_after_from_header("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470000) == 10_000


async def test_sync_errors_back_off_then_recover(fake_server: tuple[Fake, str], tmp_path: Path) -> None:
    fake, url = fake_server
    fake.sync_failures = 3
    bot = token_bot(url, tmp_path)
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    bot.sleep = record
    task = asyncio.create_task(bot.serve())
    await asyncio.wait_for(bot.ready.wait(), 10)
    await bot.stop()
    await asyncio.wait_for(task, 10)
    assert len(delays) == 3
    # Exponential with jitter: each attempt's cap doubles (1, 2, 4 s), never below half of it.
    for attempt, delay in enumerate(delays):
        assert 2**attempt / 2 <= delay <= 2**attempt


async def test_revoked_token_stops_the_bot(fake_server: tuple[Fake, str], tmp_path: Path) -> None:
    fake, url = fake_server
    fake.token_revoked = True
    bot = token_bot(url, tmp_path)
    with pytest.raises(BotError, match="M_UNKNOWN_TOKEN"):
        await asyncio.wait_for(bot.serve(), 10)


async def test_shutdown_waits_for_handlers_then_cancels(
    fake_server: tuple[Fake, str], tmp_path: Path
) -> None:
    _, url = fake_server
    bot = Bot(
        str(tmp_path / "store"), homeserver=url, access_token="t", encryption=False, shutdown_grace_s=0.2
    )
    finished: list[str] = []
    closed: list[bool] = []

    async def quick() -> None:
        await asyncio.sleep(0.05)
        finished.append("quick")

    async def stuck() -> None:
        await asyncio.sleep(60)
        finished.append("stuck")

    @bot.on_shutdown
    async def bye() -> None:
        closed.append(True)

    task = asyncio.create_task(bot.serve())
    await asyncio.wait_for(bot.ready.wait(), 10)
    bot._spawn(quick())
    bot._spawn(stuck())
    await bot.stop()
    await asyncio.wait_for(task, 5)
    assert finished == ["quick"] and closed == [True] and bot.client is None


async def test_stop_does_not_hang_on_a_stuck_step(fake_server: tuple[Fake, str], tmp_path: Path) -> None:
    _, url = fake_server
    bot = Bot(
        str(tmp_path / "store"), homeserver=url, access_token="t", encryption=False, shutdown_grace_s=0.3
    )
    started = asyncio.Event()

    @bot.on_startup
    async def hang() -> None:  # e.g. a request retried forever while the homeserver is down
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(bot.serve())
    await asyncio.wait_for(started.wait(), 10)
    await bot.stop()
    await asyncio.wait_for(task, 5)
    assert bot.client is None


async def test_dropped_connections_are_retried(fake_server: tuple[Fake, str], tmp_path: Path) -> None:
    fake, url = fake_server
    fake.sync_drops = 3
    bot = token_bot(url, tmp_path)
    task = asyncio.create_task(bot.serve())
    await asyncio.wait_for(bot.ready.wait(), 20)
    await bot.stop()
    await asyncio.wait_for(task, 10)
    assert fake.sync_drops == 0
