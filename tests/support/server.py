"""Run a real Sotto server on a real loopback port for integration tests."""

from __future__ import annotations

import os
import random
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from homeserver.app import create_app
from homeserver.config import Config, config_from_dict
from homeserver.handlers.users import create_account
from homeserver.server import HomeServer, build_homeserver
from tests.support.postgres import fresh_database, use_postgres

# Test servers listen on ports from here up to the start of the ephemeral range.
PORTS_FROM = 20_000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


# Ports handed out lately: a test often takes several before it binds any (a federation
# pair takes four), and a port free when checked could otherwise be handed out twice.
_RECENT: deque[int] = deque(maxlen=512)


def _port_range() -> tuple[int, int]:
    """Where test servers' ports come from: SOTTO_TEST_PORTS=low-high when test runs go side
    by side (tests/run_all.py gives each its own range, so one never takes a port the other
    has just checked, or a port a test keeps for restarting its server); otherwise from
    PORTS_FROM up to the kernel's ephemeral range."""
    raw = os.environ.get("SOTTO_TEST_PORTS")
    if raw:
        low, _, high = raw.partition("-")
        return int(low), int(high)
    return PORTS_FROM, _ephemeral_low()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range where there is one: tests
    restart servers on the same port, and a port the kernel hands out as the source port
    of some outgoing connection (to PostgreSQL, say) meanwhile could not be bound again."""
    low, high = _port_range()
    if high > low + 1000:
        for _ in range(50):
            port = random.randrange(low, high)
            if port in _RECENT:
                continue
            _RECENT.append(port)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    hs: HomeServer
    config: Config
    base_url: str
    runner: web.AppRunner

    @property
    def server_name(self) -> str:
        return self.config.server_name

    async def register(self, localpart: str, password: str = "password", admin: bool = False) -> str:
        return await create_account(
            self.hs.accounts,
            self.hs.passwords,
            self.server_name,
            localpart,
            password,
            self.hs.clock.time_ms(),
            admin=admin,
        )

    async def login(self, localpart: str, password: str = "password") -> dict[str, Any]:
        """Register (if needed) and log in over HTTP; returns the login response."""
        if not await self.hs.accounts.user_exists(f"@{localpart}:{self.server_name}"):
            await self.register(localpart, password)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{self.base_url}/_matrix/client/v3/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": localpart},
                    "password": password,
                },
            ) as resp,
        ):
            body: dict[str, Any] = await resp.json()
            assert resp.status == 200, body
            return body


def test_config(tmp_path: str, port: int, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "server_name": f"127.0.0.1:{port}",
        "signing_key_path": os.path.join(tmp_path, "signing.key"),
        "media_store_path": os.path.join(tmp_path, "media"),
        "bcrypt_rounds": 4,
        "listener": {"bind_address": "127.0.0.1", "port": port},
        "database": {"url": f"sqlite+aiosqlite:///{os.path.join(tmp_path, 'homeserver.db')}"},
        "rate_limits": {"enabled": False},
        "registration": {"enabled": True, "requires_token": False, "shared_secret": "test-secret"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return config_from_dict(data, tmp_path)


@asynccontextmanager
async def lasting_database() -> AsyncIterator[dict[str, Any]]:
    """Overrides for `run_server` that keep one database across restarts within the block.

    On SQLite the file under the test's directory already outlives each server; on
    PostgreSQL `run_server` would otherwise hand every start a fresh database.
    """
    if not use_postgres():
        yield {}
        return
    async with fresh_database() as url:
        yield {"database": {"url": url}}


@asynccontextmanager
async def run_server(tmp_path: str, **overrides: Any) -> AsyncIterator[RunningServer]:
    if use_postgres() and "database" not in overrides:
        # SOTTO_TEST_DATABASE=postgres: the same server on a fresh PostgreSQL database.
        async with fresh_database() as url, run_server(tmp_path, database={"url": url}, **overrides) as srv:
            yield srv
        return
    port = free_port()
    config = test_config(tmp_path, port, **overrides)
    hs = build_homeserver(config)
    app = create_app(config, hs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield RunningServer(hs, config, f"http://127.0.0.1:{port}", runner)
    finally:
        await runner.cleanup()
