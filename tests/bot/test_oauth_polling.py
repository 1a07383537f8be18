"""The device grant's polling (RFC 8628 §3.5) against a scripted token endpoint, without waiting:
the interval, `slow_down`, and each way a login ends."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from clients.oauth import DEVICE_GRANT, DeviceCode, OAuthError, device_login

TOKENS = {
    "access_token": "ACCESS-SECRET",
    "refresh_token": "REFRESH-SECRET",
    "expires_in": 300,
    "token_type": "Bearer",
}


async def scripted(answers: list[tuple[int, dict[str, Any]]]) -> tuple[TestServer, list[dict[str, str]]]:
    polls: list[dict[str, str]] = []

    async def register(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["grant_types"] == [DEVICE_GRANT, "refresh_token"] and "redirect_uris" not in body
        assert body["application_type"] == "native" and body["client_uri"] == "https://sotto.invalid/"
        return web.json_response({"client_id": "cid"}, status=201)

    async def device(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["client_id"] == "cid"
        assert str(form["scope"]).startswith("urn:matrix:client:api:* urn:matrix:client:device:")
        return web.json_response(
            {
                "device_code": "dc",
                "user_code": "ABCD-EFGH",
                "verification_uri": "https://hs/link",
                "interval": 2,
            }
        )

    async def token(request: web.Request) -> web.Response:
        polls.append({k: str(v) for k, v in (await request.post()).items()})
        status, body = answers.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/register", register)
    app.router.add_post("/device", device)
    app.router.add_post("/token", token)
    server = TestServer(app)
    await server.start_server()
    return server, polls


async def login(answers: list[tuple[int, dict[str, Any]]]) -> tuple[list[float], list[dict[str, str]], Any]:
    server, polls = await scripted(answers)
    waits: list[float] = []
    shown: list[DeviceCode] = []
    now = [0.0]

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async def show(code: DeviceCode) -> None:
        shown.append(code)

    meta = {name: str(server.make_url(f"/{name}")) for name in ("register", "device", "token")}
    metadata = {
        "registration_endpoint": meta["register"],
        "device_authorization_endpoint": meta["device"],
        "token_endpoint": meta["token"],
    }
    try:
        async with aiohttp.ClientSession() as http:
            result: Any = await device_login(http, metadata, show, sleep=sleep, clock=lambda: now[0])
    except OAuthError as exc:
        result = exc
    finally:
        await server.close()
    assert shown[0].user_code == "ABCD-EFGH"
    return waits, polls, result


async def test_pending_and_slow_down_then_tokens() -> None:
    pending = (400, {"error": "authorization_pending"})
    waits, polls, session = await login([pending, (400, {"error": "slow_down"}), pending, (200, TOKENS)])
    assert waits == [2, 2, 7, 7]  # the server's interval, five seconds more after slow_down
    assert all(p == {"grant_type": DEVICE_GRANT, "device_code": "dc", "client_id": "cid"} for p in polls)
    assert (session.access_token, session.refresh_token, session.lifetime) == (
        "ACCESS-SECRET",
        "REFRESH-SECRET",
        300,
    )
    assert session.expires_at == sum(waits) + 300
    assert "SECRET" not in repr(session)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("access_denied", "the login was refused"),
        ("expired_token", "the code expired"),
        ("invalid_client", "the token endpoint refused the login: HTTP 400 invalid_client"),
    ],
)
async def test_the_ways_a_login_fails(error: str, message: str) -> None:
    _, _, failure = await login([(400, {"error": "authorization_pending"}), (400, {"error": error})])
    assert isinstance(failure, OAuthError) and message in str(failure)
