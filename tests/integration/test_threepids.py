"""Third-party identifier endpoints on a server that binds none: well-formed requests get
the spec's "not supported" answers, malformed ones the spec's errors, and matrix-nio's
view of the account stays consistent (no identifiers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]
C = "/_matrix/client/v3"
EMAIL = {"client_secret": "s3cret.x", "email": "alice@example.org", "send_attempt": 1}
PHONE = {"client_secret": "s3cret.x", "country": "GB", "phone_number": "07700900001", "send_attempt": 1}


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("purpose", ["register", "account/3pid", "account/password"])
async def test_validation_tokens_are_not_supported(
    purpose: str, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    base = f"{server.base_url}{C}/{purpose}"
    for medium, body in (("email", EMAIL), ("msisdn", PHONE)):
        status, out = await post(http, f"{base}/{medium}/requestToken", body)
        assert (status, out["errcode"]) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"), out
    bad = [
        ({**EMAIL, "client_secret": "no spaces allowed"}, "M_INVALID_PARAM"),
        ({k: v for k, v in EMAIL.items() if k != "client_secret"}, "M_MISSING_PARAM"),
        ({k: v for k, v in EMAIL.items() if k != "send_attempt"}, "M_MISSING_PARAM"),
        ({**EMAIL, "send_attempt": "1"}, "M_BAD_JSON"),
        ({**EMAIL, "email": "not an address"}, "M_INVALID_PARAM"),
        ({**EMAIL, "email": 7}, "M_BAD_JSON"),
    ]
    for body, errcode in bad:
        status, out = await post(http, f"{base}/email/requestToken", body)
        assert (status, out["errcode"]) == (400, errcode), (body, out)
    status, out = await post(http, f"{base}/msisdn/requestToken", {**PHONE, "country": None})
    assert (status, out["errcode"]) == (400, "M_MISSING_PARAM")


async def test_account_identifiers(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    assert await alice.ok("GET", "/account/3pid") == {"threepids": []}
    status, out = await alice.request("POST", "/account/3pid/add", json={"client_secret": "abc", "sid": "1"})
    assert (status, out["errcode"]) == (400, "M_THREEPID_AUTH_FAILED")
    status, out = await alice.request("POST", "/account/3pid/add", json={"client_secret": "abc"})
    assert (status, out["errcode"]) == (400, "M_MISSING_PARAM")
    bind = {"client_secret": "abc", "sid": "1", "id_server": "id.example.org", "id_access_token": "t"}
    status, out = await alice.request("POST", "/account/3pid/bind", json=bind)
    assert (status, out["errcode"]) == (400, "M_SERVER_NOT_TRUSTED")
    status, out = await alice.request("POST", "/account/3pid", json={"three_pid_creds": {"sid": "1"}})
    assert (status, out["errcode"]) == (403, "M_THREEPID_AUTH_FAILED")
    for action in ("delete", "unbind"):
        gone = {"medium": "email", "address": "alice@example.org"}
        assert await alice.ok("POST", f"/account/3pid/{action}", json=gone) == {
            "id_server_unbind_result": "no-support"
        }
        status, out = await alice.request("POST", f"/account/3pid/{action}", json={**gone, "medium": "fax"})
        assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")
        status, out = await alice.request("POST", f"/account/3pid/{action}", json={"medium": "email"})
        assert (status, out["errcode"]) == (400, "M_MISSING_PARAM")
    caps = await alice.ok("GET", "/capabilities")
    assert caps["capabilities"]["m.3pid_changes"] == {"enabled": False}
