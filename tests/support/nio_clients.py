"""matrix-nio clients logged in to a test server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nio import AsyncClient, AsyncClientConfig, LoginResponse

from tests.support.server import RunningServer


@asynccontextmanager
async def nio_client(
    server: RunningServer,
    localpart: str,
    password: str = "password",
    store_path: str | None = None,
    encryption: bool = False,
) -> AsyncIterator[AsyncClient]:
    user_id = f"@{localpart}:{server.server_name}"
    if not await server.hs.accounts.user_exists(user_id):
        await server.register(localpart, password)
    config = AsyncClientConfig(encryption_enabled=encryption, store_sync_tokens=encryption)
    client = AsyncClient(server.base_url, user_id, store_path=store_path or "", config=config)
    try:
        resp = await client.login(password)
        assert isinstance(resp, LoginResponse), resp
        yield client
    finally:
        await client.close()
