"""Refresh tokens (spec 1.3): expiring access tokens, POST /refresh, and what a refresh
revokes and when, over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from homeserver.config import ConfigError
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server
from tests.support.server import test_config as make_config

LIFETIME = 300_000  # the default


def client(server: RunningServer, http: aiohttp.ClientSession, token: str | None) -> RawClient:
    return RawClient(http, server.base_url, token)


async def login(server: RunningServer, http: aiohttp.ClientSession, **extra: Any) -> dict[str, Any]:
    if not await server.hs.accounts.user_exists(f"@alice:{server.server_name}"):
        await server.register("alice")
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "password",
        **extra,
    }
    return dict(await client(server, http, None).ok("POST", "/login", json=body))


async def refresh(server: RunningServer, http: aiohttp.ClientSession, token: str) -> tuple[int, Any]:
    return await client(server, http, None).request("POST", "/refresh", json={"refresh_token": token})


async def works(server: RunningServer, http: aiohttp.ClientSession, access: str) -> bool:
    status, out = await client(server, http, access).request("GET", "/account/whoami")
    assert status in (200, 401), out
    return status == 200


async def test_tokens_last_unless_the_client_asks_to_refresh(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    plain = await login(server, http)
    assert "refresh_token" not in plain and "expires_in_ms" not in plain
    refreshable = await login(server, http, refresh_token=True)
    assert refreshable["expires_in_ms"] == LIFETIME
    assert refreshable["refresh_token"].startswith("syr_")
    assert await works(server, http, refreshable["access_token"])
    body = {"type": "m.login.password", "user": "alice", "password": "password", "refresh_token": "yes"}
    status, out = await client(server, http, None).request("POST", "/login", json=body)
    assert (status, out["errcode"]) == (400, "M_BAD_JSON")


async def test_an_expired_token_is_a_soft_logout_and_a_refresh_renews_it(
    server: RunningServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await login(server, http, refresh_token=True)
    clock = server.hs.clock
    now = clock.time_ms()
    monkeypatch.setattr(clock, "time_ms", lambda: now + LIFETIME + 1)
    status, out = await client(server, http, first["access_token"]).request("GET", "/account/whoami")
    assert (status, out["errcode"], out["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", True)
    status, second = await refresh(server, http, first["refresh_token"])
    assert status == 200 and second["expires_in_ms"] == LIFETIME
    assert await works(server, http, second["access_token"])


async def test_the_old_pair_lasts_until_the_new_one_is_used(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    first = await login(server, http, refresh_token=True)
    _, second = await refresh(server, http, first["refresh_token"])
    # The answer may have been lost: the old tokens still work...
    assert await works(server, http, first["access_token"])
    # ...and refreshing again gives a fresh pair, dropping the one nobody received.
    _, third = await refresh(server, http, first["refresh_token"])
    assert not await works(server, http, second["access_token"])
    assert (await refresh(server, http, second["refresh_token"]))[0] == 401
    # The first use of the new access token revokes the old pair.
    assert await works(server, http, third["access_token"])
    assert not await works(server, http, first["access_token"])
    status, out = await refresh(server, http, first["refresh_token"])
    assert (status, out["errcode"], out.get("soft_logout", False)) == (401, "M_UNKNOWN_TOKEN", False)


async def test_using_the_new_refresh_token_revokes_the_old_one(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    first = await login(server, http, refresh_token=True)
    _, second = await refresh(server, http, first["refresh_token"])
    status, third = await refresh(server, http, second["refresh_token"])
    assert status == 200
    assert (await refresh(server, http, first["refresh_token"]))[0] == 401
    assert not await works(server, http, first["access_token"])
    assert await works(server, http, third["access_token"])


async def test_logging_out_ends_the_refresh_token(server: RunningServer, http: aiohttp.ClientSession) -> None:
    first = await login(server, http, refresh_token=True)
    await client(server, http, first["access_token"]).ok("POST", "/logout", json={})
    assert (await refresh(server, http, first["refresh_token"]))[0] == 401
    # So does logging in again with the same device ID.
    second = await login(server, http, refresh_token=True)
    await login(server, http, device_id=second["device_id"])
    assert (await refresh(server, http, second["refresh_token"]))[0] == 401


async def test_refresh_refuses_bad_requests(server: RunningServer, http: aiohttp.ClientSession) -> None:
    anonymous = client(server, http, None)
    for body, status, code in (
        ({}, 400, "M_MISSING_PARAM"),
        ({"refresh_token": 5}, 400, "M_BAD_JSON"),
        ({"refresh_token": "syr_guessed"}, 401, "M_UNKNOWN_TOKEN"),
    ):
        got, out = await anonymous.request("POST", "/refresh", json=body)
        assert (got, out["errcode"]) == (status, code)


async def test_registration_can_ask_for_a_refresh_token(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    anonymous = client(server, http, None)
    body: dict[str, Any] = {"username": "newbie", "password": "a long password", "refresh_token": True}
    status, out = await anonymous.request("POST", "/register", json=body)
    assert status == 401  # user-interactive auth: one dummy stage
    body["auth"] = {"type": "m.login.dummy", "session": out["session"]}
    out = await anonymous.ok("POST", "/register", json=body)
    assert out["expires_in_ms"] == LIFETIME and "refresh_token" in out
    assert (await refresh(server, http, out["refresh_token"]))[0] == 200


async def test_refresh_tokens_can_be_turned_off(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), sessions={"refreshable_access_token_lifetime_ms": None}) as srv:
        out = await login(srv, http, refresh_token=True)
        assert "refresh_token" not in out and "expires_in_ms" not in out
    with pytest.raises(ConfigError):
        make_config(str(tmp_path), 1, sessions={"refreshable_access_token_lifetime_ms": 0})
