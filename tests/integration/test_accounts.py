"""Registration, login, logout, whoami, password change and deactivation over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import AsyncClient, LoginResponse, RegisterResponse, WhoamiResponse
from sqlalchemy import text

from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server


def client(http: aiohttp.ClientSession, server: RunningServer, token: str | None = None) -> RawClient:
    return RawClient(http, server.base_url, token)


async def register(raw: RawClient, username: str, password: str = "pw", **extra: Any) -> dict[str, Any]:
    """Register through the dummy flow, checking the 401 first."""
    status, body = await raw.request("POST", "/register", json={"username": username, "password": password})
    assert status == 401, body
    auth = {"type": "m.login.dummy", "session": body["session"]}
    status, body = await raw.request(
        "POST", "/register", json={"username": username, "password": password, "auth": auth, **extra}
    )
    assert status == 200, body
    return dict(body)


async def login(raw: RawClient, user: str, password: str = "pw", **extra: Any) -> tuple[int, Any]:
    return await raw.request(
        "POST",
        "/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            **extra,
        },
    )


def password_auth(user_id: str, session: str | None = None, password: str = "pw") -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    if session:
        auth["session"] = session
    return auth


# Registration -------------------------------------------------------------------------------


async def test_register_dummy_flow(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    status, body = await raw.request("POST", "/register", json={"username": "alice", "password": "pw"})
    assert status == 401
    assert {"stages": ["m.login.dummy"]} in body["flows"]
    assert {"stages": ["m.login.registration_token", "m.login.dummy"]} in body["flows"]
    assert body["params"] == {} and body["session"]
    out = await register(raw, "alice", initial_device_display_name="Phone", device_id="DEV1")
    assert out["user_id"] == f"@alice:{server.server_name}"
    assert out["device_id"] == "DEV1" and out["access_token"]
    assert out["home_server"] == server.server_name
    me = await client(http, server, out["access_token"]).ok("GET", "/account/whoami")
    assert me == {"user_id": out["user_id"], "device_id": "DEV1", "is_guest": False}
    devices = await client(http, server, out["access_token"]).ok("GET", "/devices")
    assert devices["devices"][0]["display_name"] == "Phone"


async def test_register_errors(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    await register(raw, "taken")
    status, body = await raw.request("POST", "/register", json={"username": "Taken", "password": "pw"})
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE")
    status, body = await raw.request("POST", "/register", json={"username": "bad name!", "password": "pw"})
    assert (status, body["errcode"]) == (400, "M_INVALID_USERNAME")
    status, body = await raw.request("POST", "/register?kind=guest", json={})
    assert (status, body["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
    status, body = await raw.request("POST", "/register", json={"username": 5})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    # An auth stage this endpoint does not offer.
    status, body = await raw.request(
        "POST", "/register", json={"username": "x", "password": "pw", "auth": {"type": "m.login.password"}}
    )
    assert (status, body["errcode"]) == (400, "M_UNRECOGNIZED")


async def test_register_generated_username_and_inhibit_login(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    raw = client(http, server)
    status, body = await raw.request("POST", "/register", json={"password": "pw", "inhibit_login": True})
    assert status == 401
    status, out = await raw.request(
        "POST", "/register", json={"auth": {"type": "m.login.dummy", "session": body["session"]}}
    )
    # Parameters given on the first request are remembered for the session.
    assert status == 200, out
    assert out["user_id"].startswith("@") and out["user_id"].endswith(":" + server.server_name)
    assert "access_token" not in out and "device_id" not in out
    status, _ = await login(raw, out["user_id"])
    assert status == 200


async def test_register_available(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    assert await raw.ok("GET", "/register/available", params={"username": "newbie"}) == {"available": True}
    await server.register("exists")
    status, body = await raw.request("GET", "/register/available", params={"username": "Exists"})
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE")
    status, body = await raw.request("GET", "/register/available", params={"username": "no spaces"})
    assert (status, body["errcode"]) == (400, "M_INVALID_USERNAME")
    status, body = await raw.request("GET", "/register/available")
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")


async def test_registration_closed(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), registration={"enabled": False}) as srv:
        raw = client(http, srv)
        status, body = await raw.request("POST", "/register", json={"username": "a", "password": "pw"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw.request("GET", "/register/available", params={"username": "a"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw.request(
            "GET", "/_matrix/client/v1/register/m.login.registration_token/validity", params={"token": "x"}
        )
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_registration_with_token(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), registration={"enabled": True, "requires_token": True}) as srv:
        raw = client(http, srv)
        now = srv.hs.clock.time_ms()
        await srv.hs.accounts.create_registration_token("once", 1, None)
        await srv.hs.accounts.create_registration_token("expired", None, now - 1000)
        validity = "/_matrix/client/v1/register/m.login.registration_token/validity"
        assert await raw.ok("GET", validity, params={"token": "once"}) == {"valid": True}
        assert await raw.ok("GET", validity, params={"token": "expired"}) == {"valid": False}
        assert await raw.ok("GET", validity, params={"token": "unknown"}) == {"valid": False}

        status, body = await raw.request("POST", "/register", json={"username": "a", "password": "pw"})
        assert status == 401
        assert body["flows"] == [{"stages": ["m.login.registration_token", "m.login.dummy"]}]
        session = body["session"]
        # Dummy alone is not enough: the token comes first.
        status, body = await raw.request(
            "POST",
            "/register",
            json={"username": "a", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}},
        )
        assert (status, body["errcode"]) == (401, "M_FORBIDDEN")
        for bad in ("expired", "unknown"):
            status, body = await raw.request(
                "POST",
                "/register",
                json={"auth": {"type": "m.login.registration_token", "token": bad, "session": session}},
            )
            assert status == 401 and body["errcode"] == "M_UNAUTHORIZED", body
        status, body = await raw.request(
            "POST",
            "/register",
            json={"auth": {"type": "m.login.registration_token", "token": "once", "session": session}},
        )
        assert status == 401 and body["completed"] == ["m.login.registration_token"]
        # The use is not counted until the registration succeeds.
        assert await raw.ok("GET", validity, params={"token": "once"}) == {"valid": True}
        status, out = await raw.request(
            "POST", "/register", json={"auth": {"type": "m.login.dummy", "session": session}}
        )
        assert status == 200, out
        assert out["user_id"] == f"@a:{srv.server_name}"
        assert await raw.ok("GET", validity, params={"token": "once"}) == {"valid": False}

        # Exhausted now.
        status, body = await raw.request(
            "POST",
            "/register",
            json={
                "username": "b",
                "password": "pw",
                "auth": {"type": "m.login.registration_token", "token": "once"},
            },
        )
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")


async def test_multi_step_registration_keeps_the_password_only_hashed(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # Sessions are stored (so that another worker can take the next step); the password
    # given in the first step must not be, and later steps may omit it.
    password = "carol-Pa55word-3d9a71"
    async with run_server(str(tmp_path), registration={"enabled": True, "requires_token": True}) as srv:
        raw = client(http, srv)
        await srv.hs.accounts.create_registration_token("tok", 1, None)

        async def stored_sessions() -> dict[str, str]:
            async with srv.hs.db.read() as conn:
                rows = await conn.execute(text("SELECT session_id, data_json FROM uia_sessions"))
                return {str(r[0]): str(r[1]) for r in rows}

        status, body = await raw.request(
            "POST", "/register", json={"username": "carol", "password": password}
        )
        assert status == 401, body
        session = body["session"]
        stored = await stored_sessions()
        assert session in stored and password not in stored[session]
        status, body = await raw.request(
            "POST",
            "/register",
            json={"auth": {"type": "m.login.registration_token", "token": "tok", "session": session}},
        )
        assert status == 401 and body["completed"] == ["m.login.registration_token"], body
        status, out = await raw.request(
            "POST", "/register", json={"auth": {"type": "m.login.dummy", "session": session}}
        )
        assert status == 200, out
        assert out["user_id"] == f"@carol:{srv.server_name}"
        assert session not in await stored_sessions()
        status, body = await login(raw, "carol", password)
        assert status == 200, body
        status, body = await login(raw, "carol", "wrong")
        assert status == 403, body


async def test_nio_register_with_token(tmp_path: Path) -> None:
    async with run_server(str(tmp_path), registration={"enabled": True, "requires_token": True}) as srv:
        await srv.hs.accounts.create_registration_token("niotoken", 5, None)
        nio_client = AsyncClient(srv.base_url, "")
        try:
            resp = await nio_client.register_with_token("niouser", "pw", "niotoken", device_name="nio")
            assert isinstance(resp, RegisterResponse), resp
            assert resp.user_id == f"@niouser:{srv.server_name}"
        finally:
            await nio_client.close()


async def test_nio_register_login_whoami(server: RunningServer) -> None:
    nio_client = AsyncClient(server.base_url, "bob")
    try:
        reg = await nio_client.register("bob", "secret", device_name="first")
        assert isinstance(reg, RegisterResponse), reg
        other = AsyncClient(server.base_url, "bob")
        try:
            resp = await other.login("secret", device_name="second")
            assert isinstance(resp, LoginResponse), resp
            who = await other.whoami()
            assert isinstance(who, WhoamiResponse)
            assert who.user_id == f"@bob:{server.server_name}" and who.device_id == resp.device_id
        finally:
            await other.close()
    finally:
        await nio_client.close()


# Login and logout ------------------------------------------------------------------------------


async def test_login_flows_and_variants(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    assert await raw.ok("GET", "/login") == {
        "flows": [{"type": "m.login.password"}, {"type": "m.login.token", "get_login_token": True}]
    }
    user_id = await server.register("carol", "pw")
    status, body = await login(raw, "carol", device_id="MYDEVICE", initial_device_display_name="Laptop")
    assert status == 200, body
    assert body["user_id"] == user_id and body["device_id"] == "MYDEVICE"
    assert body["home_server"] == server.server_name
    assert body["well_known"]["m.homeserver"]["base_url"].startswith("http://")
    # Full MXID, different case, and the legacy top-level `user` field.
    status, body = await login(raw, user_id.upper().replace(server.server_name.upper(), server.server_name))
    assert status == 200 and body["user_id"] == user_id
    status, body = await raw.request(
        "POST", "/login", json={"type": "m.login.password", "user": "CAROL", "password": "pw"}
    )
    assert status == 200 and body["user_id"] == user_id
    # Logging in again with the same device replaces that device's token.
    status, first = await login(raw, "carol", device_id="SAME")
    status, second = await login(raw, "carol", device_id="SAME")
    status, body = await client(http, server, first["access_token"]).request("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    await client(http, server, second["access_token"]).ok("GET", "/account/whoami")


async def test_login_failures(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    await server.register("dave", "pw")
    for user, password in (("dave", "wrong"), ("nobody", "pw"), ("@dave:elsewhere.org", "pw")):
        status, body = await login(raw, user, password)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), (user, body)
    status, body = await raw.request("POST", "/login", json={"type": "m.login.magic"})
    assert (status, body["errcode"]) == (400, "M_UNKNOWN")
    status, body = await raw.request(
        "POST",
        "/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b.c"},
            "password": "pw",
        },
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await raw.request("POST", "/login", data=b"not json")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")


async def test_logout_and_logout_all(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    await server.register("erin", "pw")
    tokens = []
    for _ in range(3):
        status, body = await login(raw, "erin")
        tokens.append(body["access_token"])
    first = client(http, server, tokens[0])
    assert await first.ok("POST", "/logout") == {}
    status, body = await first.request("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    second = client(http, server, tokens[1])
    assert len((await second.ok("GET", "/devices"))["devices"]) == 2
    assert await second.ok("POST", "/logout/all") == {}
    for token in tokens[1:]:
        status, body = await client(http, server, token).request("GET", "/account/whoami")
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert await server.hs.accounts.list_devices(f"@erin:{server.server_name}") == []


async def test_nio_logout(server: RunningServer) -> None:
    await server.register("frank", "pw")
    nio_client = AsyncClient(server.base_url, "frank")
    try:
        await nio_client.login("pw")
        token = nio_client.access_token
        await nio_client.logout()
        async with aiohttp.ClientSession() as http:
            status, _ = await RawClient(http, server.base_url, token).request("GET", "/account/whoami")
        assert status == 401
    finally:
        await nio_client.close()


# Password change and deactivation -------------------------------------------------------------


async def test_password_change(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    user_id = await server.register("gina", "pw")
    _, keep = await login(raw, "gina")
    _, other = await login(raw, "gina")
    me = client(http, server, keep["access_token"])
    status, body = await me.request("POST", "/account/password", json={"new_password": "new"})
    assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}]
    session = body["session"]
    status, body = await me.request(
        "POST",
        "/account/password",
        json={"new_password": "new", "auth": password_auth(user_id, session, password="wrong")},
    )
    assert (status, body["errcode"], body["session"]) == (401, "M_FORBIDDEN", session)
    status, body = await me.request(
        "POST", "/account/password", json={"new_password": "new", "auth": password_auth(user_id, session)}
    )
    assert (status, body) == (200, {})
    # Other devices are logged out; this one stays.
    await me.ok("GET", "/account/whoami")
    status, body = await client(http, server, other["access_token"]).request("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert [d["device_id"] for d in (await me.ok("GET", "/devices"))["devices"]] == [keep["device_id"]]
    status, _ = await login(raw, "gina", "pw")
    assert status == 403
    status, _ = await login(raw, "gina", "new")
    assert status == 200


async def test_password_change_keeping_devices_and_without_token(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    raw = client(http, server)
    user_id = await server.register("hank", "pw")
    _, a = await login(raw, "hank")
    _, b = await login(raw, "hank")
    me = client(http, server, a["access_token"])
    status, body = await me.request(
        "POST",
        "/account/password",
        json={"new_password": "pw2", "logout_devices": False, "auth": password_auth(user_id)},
    )
    assert status == 200, body
    await client(http, server, b["access_token"]).ok("GET", "/account/whoami")
    # Without an access token, the password stage identifies the account; everything is logged out.
    status, body = await raw.request(
        "POST",
        "/account/password",
        json={"new_password": "pw3", "auth": password_auth("hank", password="pw2")},
    )
    assert status == 200, body
    for token in (a["access_token"], b["access_token"]):
        status, _ = await client(http, server, token).request("GET", "/account/whoami")
        assert status == 401
    status, body = await raw.request("POST", "/account/password", json={"auth": password_auth("hank")})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")


async def test_password_stage_for_another_user_is_refused(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    raw = client(http, server)
    await server.register("ivan", "pw")
    await server.register("judy", "pw")
    _, ivan = await login(raw, "ivan")
    status, body = await client(http, server, ivan["access_token"]).request(
        "POST", "/account/password", json={"new_password": "x", "auth": password_auth("judy")}
    )
    assert (status, body["errcode"]) == (401, "M_FORBIDDEN")


async def test_deactivate(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    user_id = await server.register("kate", "pw")
    _, body = await login(raw, "kate")
    me = client(http, server, body["access_token"])
    status, body = await me.request("POST", "/account/deactivate", json={})
    assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}]
    status, body = await me.request(
        "POST", "/account/deactivate", json={"auth": password_auth(user_id, body["session"]), "erase": True}
    )
    assert (status, body) == (200, {"id_server_unbind_result": "no-support"})
    status, body = await me.request("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, body = await login(raw, "kate")
    assert (status, body["errcode"]) == (403, "M_USER_DEACTIVATED")
    status, body = await raw.request("GET", "/register/available", params={"username": "kate"})
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE")
    status, body = await raw.request("GET", f"/profile/{user_id}")
    assert status == 404


async def test_deactivate_leaves_rooms(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = client(http, server)
    owner = client(http, server, (await server.login("owner"))["access_token"])
    user_id = await server.register("leaver", "pw")
    _, body = await login(raw, "leaver")
    me = client(http, server, body["access_token"])
    room_id = await owner.create_room(preset="public_chat")
    status, _ = await me.join(room_id)
    assert status == 200
    status, body = await me.request("POST", "/account/deactivate", json={"auth": password_auth(user_id)})
    assert status == 200, body
    assert await server.hs.events.get_membership(room_id, user_id) is not None
    membership = await server.hs.events.get_membership(room_id, user_id)
    assert membership is not None and membership[0] == "leave"


@pytest.mark.parametrize("path", ["/account/password", "/account/deactivate"])
async def test_uia_endpoints_reject_bad_tokens(
    server: RunningServer, http: aiohttp.ClientSession, path: str
) -> None:
    status, body = await client(http, server, "bogus").request("POST", path, json={"new_password": "x"})
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_login_and_register_are_rate_limited(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    limits = {
        "enabled": True,
        "login_per_second": 0.001,
        "login_burst": 2,
        "register_per_second": 0.001,
        "register_burst": 2,
    }
    async with run_server(str(tmp_path), rate_limits=limits) as srv:
        raw = client(http, srv)
        await srv.register("limited", "pw")
        for _ in range(2):
            status, _ = await login(raw, "limited", "wrong")
            assert status == 403
        status, body = await login(raw, "limited")
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert body["retry_after_ms"] > 0
        for _ in range(2):
            status, _ = await raw.request("POST", "/register", json={})
            assert status == 401
        status, body = await raw.request("POST", "/register", json={})
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    # Password UIA without an access token (its password stage is a password guess) is
    # limited per client address at the login rate (a fresh server: a full bucket).
    async with run_server(str(tmp_path / "uia"), rate_limits=limits) as srv:
        raw = client(http, srv)
        for path in ("/account/deactivate", "/account/password"):
            status, body = await raw.request("POST", path, json={"new_password": "Another-pw-1"})
            assert status == 401, (path, body)
        status, body = await raw.request("POST", "/account/deactivate", json={})
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")


@pytest.mark.parametrize("x_forwarded", [True, False])
async def test_rate_limits_behind_a_proxy(
    tmp_path: Path, http: aiohttp.ClientSession, x_forwarded: bool
) -> None:
    """With `listener.x_forwarded`, each client behind the proxy has its own login budget (the
    proxy's own last X-Forwarded-For entry, not what the client put before it); without it,
    the header is ignored and the connection's address counts."""
    limits = {"enabled": True, "login_per_second": 0.001, "login_burst": 1}
    async with run_server(str(tmp_path), rate_limits=limits, listener={"x_forwarded": x_forwarded}) as srv:
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "nobody"},
            "password": "x",
        }

        async def attempt(forwarded: str) -> int:
            headers = {"X-Forwarded-For": forwarded}
            async with http.post(
                f"{srv.base_url}/_matrix/client/v3/login", json=body, headers=headers
            ) as resp:
                return resp.status

        assert await attempt("203.0.113.1") == 403
        assert await attempt("203.0.113.1") == 429
        # Another client (a spoofed first entry does not pick the bucket).
        assert await attempt("203.0.113.1, 203.0.113.2") == (403 if x_forwarded else 429)
