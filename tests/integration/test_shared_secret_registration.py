"""Registration by shared secret (/_synapse/admin/v1/register), driven by Synapse's own
`register_new_matrix_user` script, and its refusals."""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

import aiohttp

from homeserver.api.shared_secret_registration import NONCE_LIFETIME_S, PATH, Nonces, expected_mac
from tests.federation.synapse import VENV, ensure_synapse
from tests.support.server import RunningServer, run_server

SECRET = "test-secret"  # tests.support.server.test_config's


async def script(server: RunningServer, *args: str) -> tuple[int, str]:
    ensure_synapse()
    proc = await asyncio.create_subprocess_exec(
        str(VENV / "bin" / "register_new_matrix_user"),
        "-k",
        SECRET,
        *args,
        server.base_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def login(
    http: aiohttp.ClientSession, server: RunningServer, user: str, password: str
) -> dict[str, Any]:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    async with http.post(f"{server.base_url}/_matrix/client/v3/login", json=body) as resp:
        return {"status": resp.status, **await resp.json()}


async def test_synapses_script_creates_accounts(server: RunningServer, http: aiohttp.ClientSession) -> None:
    code, out = await script(server, "-u", "operator", "-p", "pass-word-1", "-a")
    assert code == 0, out
    logged_in = await login(http, server, "operator", "pass-word-1")
    assert logged_in["status"] == 200
    user_id = logged_in["user_id"]
    stored = await server.hs.accounts.get_user(user_id)
    assert stored is not None and stored["is_admin"]
    code, out = await script(server, "-u", "plain", "-p", "pass-word-2", "--no-admin", "-t", "bot")
    assert code == 0, out
    plain = await server.hs.accounts.get_user(f"@plain:{server.server_name}")
    assert plain is not None and not plain["is_admin"]
    # Taken: the script fails, or with --exists-ok says so and succeeds.
    code, out = await script(server, "-u", "plain", "-p", "other", "--no-admin")
    assert code != 0 and "already taken" in out
    code, out = await script(server, "-u", "plain", "-p", "other", "--no-admin", "--exists-ok")
    assert code == 0 and "already exists" in out
    assert (await login(http, server, "plain", "other"))["status"] == 403


async def test_refusals(server: RunningServer, http: aiohttp.ClientSession) -> None:
    url = server.base_url + PATH

    async def nonce() -> str:
        async with http.get(url) as resp:
            return str((await resp.json())["nonce"])

    async def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with http.post(url, json=body) as resp:
            return resp.status, await resp.json()

    def signed(n: str, username: str = "eve", password: str = "pw", admin: bool = True) -> dict[str, Any]:
        mac = expected_mac(SECRET, n, username, password, admin, None)
        return {"nonce": n, "username": username, "password": password, "admin": admin, "mac": mac}

    # A MAC made with another secret, or over other fields, is refused.
    n = await nonce()
    status, out = await post({**signed(n), "mac": expected_mac("wrong", n, "eve", "pw", True, None)})
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    n = await nonce()
    status, out = await post({**signed(n), "admin": False})
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    # A nonce is good once, and only if this server issued it.
    n = await nonce()
    assert (await post(signed(n)))[0] == 200
    status, out = await post(signed(n, username="eve2"))
    assert status == 400 and out["error"] == "unrecognised nonce"
    forged = n.rsplit(".", 1)[0] + ".0123456789abcdef0123456789abcdef"
    assert (await post(signed(forged, username="eve3")))[1]["error"] == "unrecognised nonce"
    status, out = await post(
        {"nonce": await nonce(), "username": "x", "password": "y", "admin": "yes", "mac": "z"}
    )
    assert (status, out["errcode"]) == (400, "M_BAD_JSON")
    status, out = await post({"nonce": await nonce(), "password": "y", "mac": "z"})
    assert (status, out["errcode"]) == (400, "M_BAD_JSON")
    assert await server.hs.accounts.get_user(f"@eve2:{server.server_name}") is None
    # Another worker's nonce (the same secret) is good here; an expired one is not.
    elsewhere = Nonces(SECRET)
    stale = elsewhere.issue(now=time.time() - NONCE_LIFETIME_S - 1)
    assert (await post(signed(stale, username="eve4")))[1]["error"] == "unrecognised nonce"
    body = {**signed(elsewhere.issue(), username="frank", admin=False), "displayname": "Frank F."}
    status, out = await post(body)
    assert status == 200 and out["user_id"] == f"@frank:{server.server_name}"
    async with http.get(f"{server.base_url}/_matrix/client/v3/profile/{out['user_id']}") as resp:
        assert (await resp.json())["displayname"] == "Frank F."


async def test_off_without_a_secret(http: aiohttp.ClientSession) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with run_server(tmp, registration={"shared_secret": None}) as srv:
            for method in ("GET", "POST"):
                async with http.request(method, srv.base_url + PATH, json={}) as resp:
                    body = await resp.json()
                assert resp.status == 400 and body["error"] == "Shared secret registration is not enabled"
