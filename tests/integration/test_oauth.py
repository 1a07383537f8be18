"""The OAuth 2.0 API (spec v1.15+) with Sotto as its own authorisation server: discovery,
client registration, the authorisation code grant with PKCE through the sign-in page, the
refresh and revocation of tokens, the device authorisation grant, and the `m.oauth` stage
that lets such a device reset its cross-signing keys. matrix-js-sdk's own OAuth client runs
the same flow in tests/integration/test_oauth_js.py."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from unittest.mock import ANY
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from homeserver.api.oauth_account import TICKET_LIFETIME_MS
from homeserver.handlers.auth import hash_token
from homeserver.storage.oauth import OAuthStore
from tests.integration.e2ee.fixtures import CrossSigning
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

CLIENT = {
    "client_name": "Test app",
    "client_uri": "https://app.example.org/",
    "redirect_uris": ["https://app.example.org/callback"],
    "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "none",
    "application_type": "web",
}


@pytest.fixture
async def srv(tmp_path: object) -> AsyncIterator[RunningServer]:
    async with run_server(str(tmp_path), oauth={"enabled": True}) as s:
        await s.register("alice")
        yield s


@dataclass
class Flow:
    """One client's authorisation code flow, as a client library runs it."""

    http: aiohttp.ClientSession
    meta: dict[str, Any]
    client_id: str
    device_id: str
    verifier: str
    redirect_uri: str = "https://app.example.org/callback"
    state: str = "st4te"

    def url(self, **overrides: str) -> str:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=")
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{self.device_id}",
            "state": self.state,
            "response_mode": "fragment",
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
            **overrides,
        }
        return f"{self.meta['authorization_endpoint']}?{urlencode(params)}"

    async def sign_in(self, password: str = "password", action: str = "allow", **overrides: str) -> Any:
        """The user's browser: the page, then the form. Returns the response (not followed)."""
        url = self.url(**overrides)
        async with self.http.get(url, allow_redirects=False) as page:
            assert page.status == 200, await page.text()
            assert "Test app" in await page.text()
        form = {"username": "alice", "password": password, "action": action}
        async with self.http.post(url, data=form, allow_redirects=False) as resp:
            await resp.read()
            return resp

    async def code(self) -> str:
        resp = await self.sign_in()
        assert resp.status == 302
        params = callback_params(resp.headers["Location"], self.redirect_uri)
        assert params["state"] == self.state
        return params["code"]

    async def token(self, **form: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(
            self.meta["token_endpoint"], data={"client_id": self.client_id, **form}
        ) as resp:
            assert resp.headers.get("Cache-Control") == "no-store"
            return resp.status, await resp.json()

    async def exchange(self, code: str) -> tuple[int, dict[str, Any]]:
        return await self.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=self.redirect_uri,
            code_verifier=self.verifier,
        )


def callback_params(location: str, redirect_uri: str) -> dict[str, str]:
    assert location.startswith(redirect_uri), location
    parts = urlsplit(location)
    return {k: v[0] for k, v in parse_qs(parts.fragment or parts.query).items()}


async def start(srv: RunningServer, http: aiohttp.ClientSession, client: dict[str, Any] = CLIENT) -> Flow:
    async with http.get(f"{srv.base_url}/_matrix/client/v1/auth_metadata") as resp:
        assert resp.status == 200
        meta = await resp.json()
    async with http.post(meta["registration_endpoint"], json=client) as resp:
        assert resp.status == 201, await resp.text()
        registered = await resp.json()
    return Flow(http, meta, registered["client_id"], "DEV" + secrets.token_hex(4), secrets.token_urlsafe(48))


async def test_metadata_and_registration(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    meta = flow.meta
    assert meta["issuer"] == srv.base_url + "/"
    for name in ("authorization_endpoint", "token_endpoint", "registration_endpoint", "revocation_endpoint"):
        assert meta[name].startswith(srv.base_url + "/")
    assert {"query", "fragment"} <= set(meta["response_modes_supported"])
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "refresh_token"} <= set(meta["grant_types_supported"])
    # The MSC2965 path answers the same.
    async with http.get(f"{srv.base_url}/_matrix/client/unstable/org.matrix.msc2965/auth_metadata") as resp:
        assert await resp.json() == meta
    # The same metadata registers as the same client; what the server does not support is
    # left out of the registration.
    again = await start(srv, http, {**CLIENT, "grant_types": [*CLIENT["grant_types"], "implicit"]})
    assert again.client_id == flow.client_id
    async with http.post(meta["registration_endpoint"], json={**CLIENT, "client_name": "Other"}) as resp:
        other = await resp.json()
    assert other["client_id"] != flow.client_id and other["client_name"] == "Other"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"client_uri": "http://app.example.org/"}, "invalid_client_metadata"),
        ({"client_uri": None}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://evil.example.com/callback"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example.org/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://localhost/cb"]}, "invalid_redirect_uri"),  # web clients: https only
        (
            {"application_type": "native", "redirect_uris": ["http://localhost:1234/cb"]},
            "invalid_redirect_uri",
        ),
        ({"application_type": "native", "redirect_uris": ["example:/cb"]}, "invalid_redirect_uri"),
        ({"application_type": "native", "redirect_uris": ["org.example.app://cb"]}, "invalid_redirect_uri"),
        ({"logo_uri": "https://elsewhere.example.com/logo.png"}, "invalid_client_metadata"),
        ({"grant_types": ["implicit"]}, "invalid_client_metadata"),
    ],
)
async def test_registration_refusals(
    srv: RunningServer, http: aiohttp.ClientSession, changes: dict[str, Any], error: str
) -> None:
    body = {k: v for k, v in {**CLIENT, **changes}.items() if v is not None}
    async with http.get(f"{srv.base_url}/_matrix/client/v1/auth_metadata") as resp:
        meta = await resp.json()
    async with http.post(meta["registration_endpoint"], json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == error


async def test_authorization_code_flow(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    status, tokens = await flow.exchange(await flow.code())
    assert status == 200, tokens
    assert tokens["token_type"] == "Bearer" and 0 < tokens["expires_in"] <= 300
    assert tokens["scope"] == f"urn:matrix:client:api:* urn:matrix:client:device:{flow.device_id}"
    me = RawClient(http, srv.base_url, tokens["access_token"], "@alice:" + srv.server_name)
    assert await me.ok("GET", "/account/whoami") == {
        "user_id": me.user_id,
        "device_id": flow.device_id,
        "is_guest": False,
    }
    devices = (await me.ok("GET", "/devices"))["devices"]
    assert [(d["device_id"], d.get("display_name")) for d in devices] == [(flow.device_id, "Test app")]

    # Refreshing gives a new pair; the old access token ends when the new one is first used.
    status, fresh = await flow.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert status == 200 and fresh["refresh_token"] != tokens["refresh_token"]
    assert fresh["scope"] == tokens["scope"]
    renewed = RawClient(http, srv.base_url, fresh["access_token"], me.user_id)
    assert (await renewed.ok("GET", "/account/whoami"))["device_id"] == flow.device_id
    assert (await me.request("GET", "/account/whoami"))[0] == 401
    # (Presenting the old refresh token now would end the session: the next test.)
    # The legacy POST /refresh does not renew an OAuth session (no client check, another
    # lifetime); the session goes on.
    async with http.post(
        f"{srv.base_url}/_matrix/client/v3/refresh", json={"refresh_token": fresh["refresh_token"]}
    ) as resp:
        assert (resp.status, (await resp.json())["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert (await renewed.ok("GET", "/account/whoami"))["device_id"] == flow.device_id
    # Another client cannot use this client's refresh token.
    other = await start(srv, http, {**CLIENT, "client_name": "Other"})
    status, out = await other.token(grant_type="refresh_token", refresh_token=fresh["refresh_token"])
    assert (status, out["error"]) == (400, "invalid_grant")

    # Revoking the refresh token ends the session: both tokens and the device.
    async with http.post(
        flow.meta["revocation_endpoint"], data={"token": fresh["refresh_token"], "client_id": flow.client_id}
    ) as resp:
        assert resp.status == 200
    status, out = await renewed.request("GET", "/account/whoami")
    assert (status, out["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert await srv.hs.accounts.list_devices(me.user_id) == []
    assert await OAuthStore(srv.hs.db).session(me.user_id, flow.device_id) is None
    # An unknown (or already revoked) token is not an error.
    async with http.post(flow.meta["revocation_endpoint"], data={"token": "nope"}) as resp:
        assert resp.status == 200


async def test_codes_are_single_use_and_bound(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    other = await start(srv, http, {**CLIENT, "client_name": "Other"})
    # The verifier must match the challenge; the code is gone after one attempt.
    code = await flow.code()
    status, out = await flow.token(
        grant_type="authorization_code", code=code, redirect_uri=flow.redirect_uri, code_verifier="x" * 43
    )
    assert (status, out["error"]) == (400, "invalid_grant")
    assert (await flow.exchange(code))[1]["error"] == "invalid_grant"
    # Another client, or another redirect URI, cannot exchange it.
    code = await flow.code()
    other.verifier = flow.verifier
    assert (await other.exchange(code))[1]["error"] == "invalid_grant"
    code = await flow.code()
    status, out = await flow.token(
        grant_type="authorization_code",
        code=code,
        redirect_uri="https://app.example.org/other",
        code_verifier=flow.verifier,
    )
    assert out["error"] == "invalid_grant"
    code = await flow.code()
    assert (await flow.exchange(code))[0] == 200
    assert (await flow.exchange(code))[1]["error"] == "invalid_grant"
    # A code issued before the account was deactivated gives no tokens.
    code = await flow.code()
    await srv.hs.accounts.deactivate("@alice:" + srv.server_name)
    assert (await flow.exchange(code))[1]["error"] == "invalid_grant"
    status, out = await flow.token(grant_type="password", username="alice", password="password")
    assert (status, out["error"]) == (400, "unsupported_grant_type")
    status, out = await flow.token(grant_type="authorization_code", code=code, client_id="nope")
    assert (status, out["error"]) == (401, "invalid_client")


async def test_authorization_errors(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    # An unknown client or redirect URI: an error page, never a redirect.
    for overrides in ({"client_id": "nope"}, {"redirect_uri": "https://evil.example.com/cb"}):
        async with http.get(flow.url(**overrides), allow_redirects=False) as resp:
            assert resp.status == 400 and "Location" not in resp.headers
    # Other errors go back to the client, with its state.
    for overrides, error in (
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "urn:matrix:client:api:*"}, "invalid_scope"),
        ({"scope": "openid urn:matrix:client:device:ABC"}, "invalid_scope"),
    ):
        async with http.get(flow.url(**overrides), allow_redirects=False) as resp:
            assert resp.status == 302
            params = callback_params(resp.headers["Location"], flow.redirect_uri)
            assert (params["error"], params["state"]) == (error, flow.state), overrides
    # A wrong password: the page again, no code.
    resp = await flow.sign_in(password="wrong")
    assert resp.status == 403 and "Location" not in resp.headers
    # The user refuses.
    resp = await flow.sign_in(action="deny")
    params = callback_params(resp.headers["Location"], flow.redirect_uri)
    assert params["error"] == "access_denied" and "code" not in params
    # A login hint fills in the name.
    async with http.get(flow.url(login_hint="mxid:@alice:" + srv.server_name)) as page:
        assert f'value="@alice:{srv.server_name}"' in await page.text()
    # The query response mode; the page refuses to be framed.
    resp = await flow.sign_in(response_mode="query")
    assert urlsplit(resp.headers["Location"]).query.startswith("code=")
    async with http.get(flow.url(), allow_redirects=False) as page:
        assert page.headers["X-Frame-Options"] == "DENY"


async def test_native_client_loopback_any_port(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    native = {
        **CLIENT,
        "application_type": "native",
        "redirect_uris": ["http://127.0.0.1/callback", "org.example.app:/callback"],
    }
    flow = await start(srv, http, native)
    flow.redirect_uri = "http://127.0.0.1:48213/callback"
    status, tokens = await flow.exchange(await flow.code())
    assert status == 200, tokens
    flow.redirect_uri = "org.example.app:/callback"
    assert (await flow.exchange(await flow.code()))[0] == 200


async def test_device_authorization_grant(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    scope = f"urn:matrix:client:api:* urn:matrix:client:device:{flow.device_id}"
    device_grant = "urn:ietf:params:oauth:grant-type:device_code"

    async def begin() -> dict[str, Any]:
        async with http.post(
            flow.meta["device_authorization_endpoint"], data={"client_id": flow.client_id, "scope": scope}
        ) as resp:
            assert resp.status == 200
            return dict(await resp.json())

    async def poll(device_code: str) -> tuple[int, dict[str, Any]]:
        return await flow.token(grant_type=device_grant, device_code=device_code)

    async def decide(user_code: str, action: str, password: str = "password") -> int:
        async with http.get(f"{srv.base_url}/_sotto/oauth2/link", params={"user_code": user_code}) as page:
            assert user_code in await page.text()
        form = {"user_code": user_code.lower(), "username": "alice", "password": password, "action": action}
        async with http.post(f"{srv.base_url}/_sotto/oauth2/link", data=form) as resp:
            return resp.status

    started = await begin()
    assert started["verification_uri_complete"].endswith(started["user_code"])
    other = await start(srv, http, {**CLIENT, "client_name": "Other"})
    status, out = await other.token(grant_type=device_grant, device_code=started["device_code"])
    assert out["error"] == "invalid_grant"  # another client's device code
    assert (await poll(started["device_code"]))[1]["error"] == "authorization_pending"
    assert await decide(started["user_code"], "allow", password="wrong") == 403
    # Polling again at once is too fast (RFC 8628's slow_down; the interval is 5 s).
    assert (await poll(started["device_code"])) == (400, {"error": "slow_down", "error_description": ANY})
    assert await decide(started["user_code"], "allow") == 200
    assert await decide(started["user_code"], "deny") == 400  # decided once, for good
    status, tokens = await poll(started["device_code"])
    assert status == 200 and tokens["scope"] == scope
    me = RawClient(http, srv.base_url, tokens["access_token"], "@alice:" + srv.server_name)
    assert (await me.ok("GET", "/account/whoami"))["device_id"] == flow.device_id
    assert (await poll(started["device_code"]))[1]["error"] == "invalid_grant"  # used
    assert await decide(started["user_code"], "allow") == 400

    refused = await begin()
    assert await decide(refused["user_code"], "deny") == 200
    assert (await poll(refused["device_code"]))[1]["error"] == "access_denied"


async def test_cross_signing_reset_through_the_account_page(
    srv: RunningServer, http: aiohttp.ClientSession
) -> None:
    flow = await start(srv, http)
    _, tokens = await flow.exchange(await flow.code())
    me = RawClient(http, srv.base_url, tokens["access_token"], "@alice:" + srv.server_name)
    await me.ok("POST", "/keys/device_signing/upload", json=CrossSigning(me.user_id).upload_body())
    replacement = CrossSigning(me.user_id).upload_body()
    status, body = await me.request("POST", "/keys/device_signing/upload", json=replacement)
    assert status == 401 and body["flows"] == [{"stages": ["m.oauth"]}]
    url = body["params"]["m.oauth"]["url"]
    assert "action=org.matrix.cross_signing_reset" in url
    retry = {**replacement, "auth": {"session": body["session"]}}
    # Not approved yet: asked again.
    status, again = await me.request("POST", "/keys/device_signing/upload", json=retry)
    assert status == 401 and again["flows"] == [{"stages": ["m.oauth"]}]
    # A wrong password in the account page approves nothing.
    form = {"username": "alice", "password": "wrong"}
    async with http.post(url, data=form) as resp:
        assert resp.status == 403
    assert (await me.request("POST", "/keys/device_signing/upload", json=retry))[0] == 401
    async with http.post(url, data={**form, "password": "password"}) as resp:
        assert resp.status == 200
    await me.ok("POST", "/keys/device_signing/upload", json=retry)
    query = await me.ok("POST", "/keys/query", json={"device_keys": {me.user_id: []}})
    assert query["master_keys"][me.user_id]["keys"] == replacement["master_key"]["keys"]
    # One approval, one reset.
    third = CrossSigning(me.user_id).upload_body()
    status, body = await me.request("POST", "/keys/device_signing/upload", json=third)
    status, _ = await me.request(
        "POST", "/keys/device_signing/upload", json={**third, "auth": {"session": body["session"]}}
    )
    assert status == 401
    # A device that signed in with a password still uses the password.
    legacy = await srv.login("alice")
    raw = RawClient(http, srv.base_url, legacy["access_token"], me.user_id)
    status, body = await raw.request("POST", "/keys/device_signing/upload", json=third)
    assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}]


async def test_off_by_default(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.base_url}/_matrix/client/v1/auth_metadata") as resp:
        assert resp.status == 404 and (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    async with http.post(f"{server.base_url}/_sotto/oauth2/register", json=CLIENT) as resp:
        assert resp.status == 404


async def test_registrations_are_rate_limited(tmp_path: object, http: aiohttp.ClientSession) -> None:
    limits = {"enabled": True, "login_per_second": 0.001, "login_burst": 2}
    async with run_server(str(tmp_path), oauth={"enabled": True}, rate_limits=limits) as s:
        statuses = []
        for i in range(3):
            async with http.post(
                f"{s.base_url}/_sotto/oauth2/register", json={**CLIENT, "client_name": f"c{i}"}
            ) as r:
                statuses.append(r.status)
        assert statuses == [201, 201, 429]


async def register_in_page(flow: Flow, username: str, password: str, **extra: str) -> Any:
    url = flow.url(prompt="create")
    async with flow.http.get(url, allow_redirects=False) as page:
        assert page.status == 200 and "Create an account" in await page.text()
    form = {"username": username, "password": password, "register": "1", "action": "allow", **extra}
    async with flow.http.post(url, data=form, allow_redirects=False) as resp:
        await resp.read()
        return resp


async def test_registration_in_the_sign_in_page(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    assert flow.meta["prompt_values_supported"] == ["create"]
    resp = await register_in_page(flow, "newbie", "a good passphrase")
    assert resp.status == 302
    code = callback_params(resp.headers["Location"], flow.redirect_uri)["code"]
    status, tokens = await flow.exchange(code)
    assert status == 200
    me = RawClient(http, srv.base_url, tokens["access_token"], "")
    assert (await me.ok("GET", "/account/whoami"))["user_id"] == f"@newbie:{srv.server_name}"
    # The password works for signing in, the name is now taken, and bad names are refused.
    assert (await srv.login("newbie", "a good passphrase"))["user_id"].startswith("@newbie:")
    for username, password in (("newbie", "another one"), ("bad name!", "x" * 12), ("fresh", "")):
        resp = await register_in_page(flow, username, password)
        assert resp.status == 400 and "Location" not in resp.headers, (username, resp.status)


async def test_registration_in_the_page_follows_the_server_rules(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with run_server(str(tmp_path), oauth={"enabled": True}, registration={"requires_token": True}) as s:
        flow = await start(s, http)
        resp = await register_in_page(flow, "tokenless", "a good passphrase", token="wrong")
        assert resp.status == 401
        await s.hs.accounts.create_registration_token("letmein", 1, None)
        resp = await register_in_page(flow, "invited", "a good passphrase", token="letmein")
        assert resp.status == 302
        resp = await register_in_page(flow, "second", "a good passphrase", token="letmein")
        assert resp.status == 401  # used up
    async with run_server(
        str(tmp_path / "closed"), oauth={"enabled": True}, registration={"enabled": False}
    ) as s:
        flow = await start(s, http)
        assert "prompt_values_supported" not in flow.meta
        # prompt=create on a closed server shows the sign-in page; a forged form does nothing.
        async with http.get(flow.url(prompt="create")) as page:
            assert "Create an account" not in await page.text()
        form = {"username": "sneaky", "password": "a good passphrase", "register": "1", "action": "allow"}
        async with http.post(flow.url(prompt="create"), data=form, allow_redirects=False) as resp:
            assert resp.status == 403
        assert not await s.hs.accounts.user_exists(f"@sneaky:{s.server_name}")


async def test_account_pages_list_and_sign_out_devices(
    srv: RunningServer, http: aiohttp.ClientSession
) -> None:
    flow = await start(srv, http)
    assert "org.matrix.device_delete" in flow.meta["account_management_actions_supported"]
    _, tokens = await flow.exchange(await flow.code())
    other = await srv.login("alice")
    query = urlencode({"action": "org.matrix.device_delete", "device_id": other["device_id"]})
    url = f"{flow.meta['account_management_uri']}?{query}"
    async with http.get(url) as page:
        assert page.status == 200 and 'name="password"' in await page.text()
    async with http.post(url, data={"username": "alice", "password": "wrong"}) as page:
        assert page.status == 403 and "Last seen" not in await page.text()
    async with http.post(url, data={"username": "alice", "password": "password"}) as page:
        listing = await page.text()
    assert flow.device_id in listing and other["device_id"] in listing
    ticket = re.search(r'name="ticket" value="([^"]+)"', listing)
    assert ticket
    sign_out = {"ticket": unescape(ticket.group(1)), "device_id": other["device_id"], "op": "sign_out"}
    async with http.post(flow.meta["account_management_uri"], data=sign_out) as page:
        assert page.status == 200 and "Signed out" in await page.text()
    gone = RawClient(http, srv.base_url, other["access_token"], "")
    assert (await gone.request("GET", "/account/whoami"))[0] == 401
    still = RawClient(http, srv.base_url, tokens["access_token"], "")
    assert (await still.request("GET", "/account/whoami"))[0] == 200
    # An old ticket signs nothing out.
    clock = srv.hs.clock
    later = clock.time_ms() + TICKET_LIFETIME_MS + 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clock, "time_ms", lambda: later)
        async with http.post(
            flow.meta["account_management_uri"], data={**sign_out, "device_id": flow.device_id}
        ) as page:
            assert page.status == 403
    # A forged or altered ticket signs nothing out.
    for forged in (sign_out["ticket"][:-2] + "xx", "e30.nope", ""):
        async with http.post(
            flow.meta["account_management_uri"],
            data={**sign_out, "ticket": forged, "device_id": flow.device_id},
        ) as page:
            assert page.status == 403
    assert (await still.request("GET", "/account/whoami"))[0] == 200


async def test_account_page_deactivates(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    _, tokens = await flow.exchange(await flow.code())
    me = RawClient(http, srv.base_url, tokens["access_token"], "@alice:" + srv.server_name)
    room = await me.create_room(preset="public_chat")
    await me.ok("PUT", f"/profile/{me.user_id}/displayname", json={"displayname": "Alice"})
    url = f"{flow.meta['account_management_uri']}?action=org.matrix.account_deactivate"
    async with http.post(url, data={"username": "alice", "password": "wrong", "erase": "1"}) as page:
        assert page.status == 403
    assert (await me.request("GET", "/account/whoami"))[0] == 200
    async with http.post(url, data={"username": "alice", "password": "password", "erase": "1"}) as page:
        assert page.status == 200 and "deactivated" in await page.text()
    assert (await me.request("GET", "/account/whoami"))[0] == 401
    user = await srv.hs.accounts.get_user(me.user_id)
    assert user is not None and user["deactivated"]
    membership = await srv.hs.events.get_membership(room, me.user_id)
    assert membership is not None and membership[0] == "leave"
    bob = RawClient(http, srv.base_url, (await srv.login("bob"))["access_token"], "")
    status, profile = await bob.request("GET", f"/profile/{me.user_id}")
    assert status == 404 or "displayname" not in profile


async def test_account_page_changes_the_password(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    _, tokens = await flow.exchange(await flow.code())
    me = RawClient(http, srv.base_url, tokens["access_token"], "@alice:" + srv.server_name)
    async with http.get(flow.meta["account_management_uri"]) as landing:
        assert "?action=sotto.password_change" in await landing.text()
    url = f"{flow.meta['account_management_uri']}?action=sotto.password_change"
    async with http.get(url) as page:
        assert page.status == 200 and 'name="new_password2"' in await page.text()
    form = {"username": "alice", "password": "password", "new_password": "n3w", "new_password2": "n3w"}
    for wrong, status in (
        ({"password": "wrong"}, 403),
        ({"new_password2": "other"}, 400),
        ({"new_password": "", "new_password2": ""}, 400),
    ):
        async with http.post(url, data={**form, **wrong}) as page:
            assert page.status == status, wrong
    assert (await srv.login("alice", "password"))["user_id"] == me.user_id  # unchanged so far
    async with http.post(url, data=form) as page:
        assert page.status == 200 and "is changed" in await page.text()
    # The devices stay signed in unless asked; the new password is the one that works.
    assert (await me.request("GET", "/account/whoami"))[0] == 200
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}}
    async with http.post(
        f"{srv.base_url}/_matrix/client/v3/login", json={**login, "password": "password"}
    ) as r:
        assert r.status == 403
    async with http.post(
        url, data={**form, "password": "n3w", "new_password": "x", "new_password2": "x", "sign_out": "1"}
    ) as page:
        assert page.status == 200 and "signed out" in await page.text()
    assert (await me.request("GET", "/account/whoami"))[0] == 401
    assert await srv.hs.accounts.list_devices(me.user_id) == []
    async with http.post(f"{srv.base_url}/_matrix/client/v3/login", json={**login, "password": "x"}) as r:
        assert r.status == 200


async def test_a_replayed_refresh_token_ends_the_session(
    srv: RunningServer, http: aiohttp.ClientSession
) -> None:
    flow = await start(srv, http)
    _, first = await flow.exchange(await flow.code())
    status, second = await flow.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert status == 200
    me = RawClient(http, srv.base_url, second["access_token"], "")
    assert (await me.request("GET", "/account/whoami"))[0] == 200  # the new pair in use: the old one spent
    # The spent refresh token comes back (a thief, or a forked client): refused, and the
    # session ends for whoever holds the current tokens too.
    status, out = await flow.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert (status, out["error"]) == (400, "invalid_grant")
    assert (await me.request("GET", "/account/whoami"))[0] == 401
    status, out = await flow.token(grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert (status, out["error"]) == (400, "invalid_grant")
    # The spent token is forgotten with the device: it cannot end a later session of that ID.
    assert await srv.hs.accounts.spent_refresh(hash_token(first["refresh_token"])) is None
    # A retried refresh whose answer was lost is not a replay: the same token trades again.
    flow2 = await start(srv, http)
    flow2.device_id = "RETRY"
    _, tokens = await flow2.exchange(await flow2.code())
    for _ in range(2):
        status, again = await flow2.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
        assert status == 200
    ok = RawClient(http, srv.base_url, again["access_token"], "")
    assert (await ok.request("GET", "/account/whoami"))[0] == 200


async def test_locked_accounts_do_not_sign_in(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    flow = await start(srv, http)
    await srv.hs.accounts.set_moderation("@alice:" + srv.server_name, "locked", True)
    resp = await flow.sign_in()
    assert resp.status == 401 and "Location" not in resp.headers
    url = f"{flow.meta['account_management_uri']}?action=org.matrix.devices_list"
    async with http.post(url, data={"username": "alice", "password": "password"}) as page:
        assert page.status == 401 and "Last seen" not in await page.text()
