from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server


@pytest.fixture
async def server(tmp_path: object) -> AsyncIterator[RunningServer]:
    """A real Sotto server on a loopback port with a fresh SQLite database."""
    async with run_server(str(tmp_path)) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_user(server: RunningServer, http: aiohttp.ClientSession) -> Callable[[str], Awaitable[RawClient]]:
    """Create an account and an access token without going through /login."""

    async def make(localpart: str) -> RawClient:
        user_id = await server.register(localpart)
        token, _ = await server.hs.auth.create_session(user_id, None, None)
        return RawClient(http, server.base_url, token, user_id)

    return make
