"""Signing in another device with a login token (POST /login/get_token, `m.login.token`)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.support.http import RawClient
from tests.support.server import RunningServer

GET_TOKEN = "/_matrix/client/v1/login/get_token"


async def signed_in(server: RunningServer, http: aiohttp.ClientSession) -> RawClient:
    user_id = await server.register("alice")
    token, _ = await server.hs.auth.create_session(user_id, None, None)
    return RawClient(http, server.base_url, token, user_id)


async def get_token(alice: RawClient, password: str = "password") -> tuple[int, Any]:
    status, out = await alice.request("POST", GET_TOKEN, json={})
    assert status == 401 and out["flows"] == [{"stages": ["m.login.password"]}]
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice.user_id},
        "password": password,
        "session": out["session"],
    }
    return await alice.request("POST", GET_TOKEN, json={"auth": auth})


async def token_login(server: RunningServer, http: aiohttp.ClientSession, token: Any) -> tuple[int, Any]:
    body = {"type": "m.login.token", "token": token, "initial_device_display_name": "phone"}
    return await RawClient(http, server.base_url).request("POST", "/login", json=body)


async def test_a_login_token_signs_in_another_device_once(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await signed_in(server, http)
    flows = (await RawClient(http, server.base_url).ok("GET", "/login"))["flows"]
    assert {"type": "m.login.token", "get_login_token": True} in flows
    caps = (await alice.ok("GET", "/capabilities"))["capabilities"]
    assert caps["m.get_login_token"] == {"enabled": True}

    status, issued = await get_token(alice)
    assert status == 200 and issued["expires_in_ms"] == 120_000
    status, out = await token_login(server, http, issued["login_token"])
    assert status == 200 and out["user_id"] == alice.user_id
    phone = RawClient(http, server.base_url, out["access_token"], alice.user_id)
    assert (await phone.ok("GET", "/account/whoami"))["device_id"] == out["device_id"]
    # Used once only.
    status, out = await token_login(server, http, issued["login_token"])
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")


async def test_login_tokens_need_the_password_and_expire(
    server: RunningServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await signed_in(server, http)
    status, out = await get_token(alice, password="wrong")
    assert status == 401 and out["errcode"] == "M_FORBIDDEN"  # the stage failed; nothing issued
    _, issued = await get_token(alice)
    clock = server.hs.clock
    later = clock.time_ms() + 120_001
    monkeypatch.setattr(clock, "time_ms", lambda: later)
    status, out = await token_login(server, http, issued["login_token"])
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    for bad, code in ((None, "M_MISSING_PARAM"), (5, "M_BAD_JSON"), ("slt_guessed", "M_FORBIDDEN")):
        status, out = await token_login(server, http, bad)
        assert out["errcode"] == code, (bad, out)
