from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from clients import Bot
from tests.bot.peer import Peer, login_peer
from tests.support.server import RunningServer

BotFactory = Callable[..., Bot]


@pytest.fixture
def make_bot(server: RunningServer, tmp_path: Path) -> BotFactory:
    """A Bot for @bot on the test server; the account is registered on first `running()`."""

    def factory(store: str = "bot-store", localpart: str = "bot", **options: Any) -> Bot:
        return Bot(
            str(tmp_path / store),
            homeserver=server.base_url,
            user_id=f"@{localpart}:{server.server_name}",
            password="password",
            sync_timeout_ms=500,
            shutdown_grace_s=2.0,
            **options,
        )

    return factory


@asynccontextmanager
async def running(bot: Bot, server: RunningServer, timeout: float = 30.0) -> AsyncIterator[Bot]:
    """Serve the bot in the background until the block ends; wait until it is ready."""
    user_id = bot.config.user_id
    if user_id is not None and not await server.hs.accounts.user_exists(user_id):
        await server.register(user_id[1:].split(":", 1)[0])
    task = asyncio.create_task(bot.serve())
    ready = asyncio.create_task(bot.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises the bot's error
    assert ready in done, "the bot did not become ready"
    try:
        yield bot
    finally:
        await bot.stop()
        await asyncio.wait_for(task, timeout=timeout)


@pytest.fixture
async def peers(server: RunningServer, tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Peer]]]:
    made: list[Peer] = []

    async def make(localpart: str) -> Peer:
        peer = await login_peer(server, str(tmp_path / "peers"), localpart)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        await peer.close()
