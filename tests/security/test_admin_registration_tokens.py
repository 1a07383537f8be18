"""Registration tokens through the admin API: created, listed by validity, changed, used by
a real registration, deleted."""

from __future__ import annotations

import time
from urllib.parse import quote

import aiohttp

from tests.security.test_admin_api import A1, user
from tests.support.server import RunningServer

PATH = A1 + "/registration_tokens"


async def register_with(http: aiohttp.ClientSession, server: RunningServer, name: str, token: str) -> int:
    url = f"{server.base_url}/_matrix/client/v3/register"
    body = {"username": name, "password": "a-good-password"}
    async with http.post(url, json=body) as resp:
        session = (await resp.json())["session"]
    auth = {"type": "m.login.registration_token", "token": token, "session": session}
    async with http.post(url, json={**body, "auth": auth}) as resp:
        stage = await resp.json()
    if "m.login.registration_token" not in stage.get("completed", []):
        return resp.status
    async with http.post(url, json={**body, "auth": {"type": "m.login.dummy", "session": session}}) as resp:
        return resp.status


async def test_tokens_lifecycle(server: RunningServer, http: aiohttp.ClientSession) -> None:
    server.hs.config.registration.requires_token = True
    admin = await user(server, http, "root", admin=True)
    once = await admin.ok("POST", PATH + "/new", json={"token": "just-once", "uses_allowed": 1})
    assert once == {
        "token": "just-once",
        "uses_allowed": 1,
        "pending": 0,
        "completed": 0,
        "expiry_time": None,
    }
    generated = await admin.ok("POST", PATH + "/new", json={"length": 20})
    assert len(generated["token"]) == 20 and generated["uses_allowed"] is None
    soon = int(time.time() * 1000) + 3_600_000
    timed = await admin.ok("POST", PATH + "/new", json={"expiry_time": soon})
    assert timed["expiry_time"] == soon and len(timed["token"]) == 16

    assert await register_with(http, server, "first", "just-once") == 200
    assert await register_with(http, server, "second", "just-once") == 401
    used = await admin.ok("GET", f"{PATH}/just-once")
    assert used["completed"] == 1

    # (An expired one cannot be made through the API; as one that has run out of time.)
    await server.hs.accounts.create_registration_token("expired", None, int(time.time() * 1000) - 1000)
    every = await admin.ok("GET", PATH)
    assert {t["token"] for t in every["registration_tokens"]} == {
        "expired",
        "just-once",
        generated["token"],
        timed["token"],
    }
    valid = await admin.ok("GET", PATH, params={"valid": "true"})
    assert {t["token"] for t in valid["registration_tokens"]} == {generated["token"], timed["token"]}
    spent = await admin.ok("GET", PATH, params={"valid": "false"})
    assert [t["token"] for t in spent["registration_tokens"]] == ["expired", "just-once"]

    # One more use allowed: valid again, and it works.
    assert (await admin.ok("PUT", f"{PATH}/just-once", json={"uses_allowed": 2}))["uses_allowed"] == 2
    assert await register_with(http, server, "second", "just-once") == 200
    # Deleted: gone, and no longer lets anyone in.
    assert await admin.ok("DELETE", f"{PATH}/{quote(generated['token'])}") == {}
    assert await register_with(http, server, "third", generated["token"]) == 401
    for method in ("GET", "PUT", "DELETE"):
        status, out = await admin.request(method, f"{PATH}/{quote(generated['token'])}", json={})
        assert (status, out["errcode"]) == (404, "M_NOT_FOUND"), method


async def test_bad_requests(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    await admin.ok("POST", PATH + "/new", json={"token": "taken"})
    past = int(time.time() * 1000) - 1000
    for body in (
        {"token": "taken"},
        {"token": "has space"},
        {"token": "x" * 65},
        {"token": 5},
        {"uses_allowed": -1},
        {"uses_allowed": "1"},
        {"uses_allowed": True},
        {"expiry_time": past},
        {"length": 0},
        {"length": 65},
    ):
        status, out = await admin.request("POST", PATH + "/new", json=body)
        assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), (body, out)
    status, out = await admin.request("PUT", f"{PATH}/taken", json={"expiry_time": past})
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")
    status, out = await admin.request("GET", PATH, params={"valid": "yes"})
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")
    assert [t["token"] for t in (await admin.ok("GET", PATH))["registration_tokens"]] == ["taken"]
