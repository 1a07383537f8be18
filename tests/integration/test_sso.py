"""Single sign-on (`m.login.sso`) through an OpenID Connect provider: a real HTTP provider
(tests/support/oidc_provider.py) and a real server, the browser's steps made by hand."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import pytest

from homeserver.handlers.sso import SESSION_TTL_MS
from tests.integration.e2ee.fixtures import CrossSigning
from tests.integration.test_oauth import callback_params
from tests.integration.test_oauth import start as oauth_start
from tests.security.test_admin_api import A2, user
from tests.support.http import RawClient
from tests.support.oidc_provider import FakeIdentityProvider, identity_provider
from tests.support.server import RunningServer, run_server

REDIRECT = "https://client.example/after-sso?app_state=42&loginToken=stale"
ALICE = {"sub": "idp-user-1", "preferred_username": "Alice.Smith", "name": "Alice Smith"}


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdentityProvider]:
    async with identity_provider() as provider:
        provider.user = dict(ALICE)
        yield provider


@pytest.fixture
async def sso_server(tmp_path: object, idp: FakeIdentityProvider) -> AsyncIterator[RunningServer]:
    second = idp.provider_config(idp_id="other", idp_name="Other IdP")
    async with run_server(str(tmp_path), oidc_providers=[idp.provider_config(), second]) as srv:
        yield srv


class Browser:
    """The browser's part: follows redirects by hand and keeps the SSO cookie."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.cookies: dict[str, str] = {}

    async def get(self, url: str) -> tuple[int, dict[str, str], str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        async with self.http.get(url, headers=headers, allow_redirects=False) as resp:
            for name, morsel in resp.cookies.items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
            return resp.status, dict(resp.headers), await resp.text()

    async def sign_in(self, start: str) -> tuple[int, str]:
        """From the server's redirect endpoint through the provider to the callback's page."""
        status, headers, body = await self.get(start)
        assert status == 302, body
        status, headers, body = await self.get(headers["Location"])  # the provider
        assert status == 302, body
        status, _, body = await self.get(headers["Location"])  # the callback
        return status, body


def continue_link(page: str) -> str:
    found = re.search(r'id="continue" href="([^"]+)"', page)
    assert found, page
    return unescape(found.group(1))


def login_url(server: RunningServer, idp_id: str = "oidc-test", redirect: str = REDIRECT) -> str:
    path = "/_matrix/client/v3/login/sso/redirect" + (f"/{idp_id}" if idp_id else "")
    return server.base_url + path + "?" + urlencode({"redirectUrl": redirect})


async def token_login(server: RunningServer, http: aiohttp.ClientSession, token: str) -> tuple[int, Any]:
    body = {"type": "m.login.token", "token": token}
    return await RawClient(http, server.base_url).request("POST", "/login", json=body)


async def sso_login(server: RunningServer, http: aiohttp.ClientSession) -> dict[str, Any]:
    status, page = await Browser(http).sign_in(login_url(server))
    assert status == 200, page
    target = urlsplit(continue_link(page))
    query = parse_qs(target.query)
    status, out = await token_login(server, http, query["loginToken"][0])
    assert status == 200, out
    return dict(out)


async def test_login_flows_name_the_providers(sso_server: RunningServer, http: aiohttp.ClientSession) -> None:
    flows = (await RawClient(http, sso_server.base_url).ok("GET", "/login"))["flows"]
    sso = [f for f in flows if f["type"] == "m.login.sso"]
    assert sso == [
        {
            "type": "m.login.sso",
            "identity_providers": [
                {"id": "oidc-test", "name": "Test IdP"},
                {"id": "oidc-other", "name": "Other IdP"},
            ],
        }
    ]
    # Two providers and none named: the user chooses.
    status, _, page = await Browser(http).get(login_url(sso_server, idp_id=""))
    assert status == 200 and "oidc-test?redirectUrl=" in page and "oidc-other?redirectUrl=" in page


async def test_sign_in_creates_then_finds_the_account(
    sso_server: RunningServer, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    browser = Browser(http)
    status, headers, _ = await browser.get(login_url(sso_server))
    assert status == 302
    authorize = urlsplit(headers["Location"])
    params = parse_qs(authorize.query)
    assert authorize.path == "/authorize" and params["redirect_uri"] == [
        sso_server.base_url + "/_synapse/client/oidc/callback"
    ]
    assert params["code_challenge_method"] == ["S256"] and "sotto_oidc_session" in browser.cookies

    status, headers, _ = await browser.get(headers["Location"])
    status, _, page = await browser.get(headers["Location"])
    assert status == 200 and "client.example" in page and "@alice.smith:" in page
    assert "sotto_oidc_session" not in browser.cookies  # cleared: the callback cannot be replayed
    target = urlsplit(continue_link(page))
    query = parse_qs(target.query)
    assert (
        target.netloc == "client.example" and query["app_state"] == ["42"] and len(query["loginToken"]) == 1
    )
    # The provider got the PKCE verifier and the client secret (it refuses otherwise).
    assert "code_verifier" in idp.token_requests[-1]

    status, out = await token_login(sso_server, http, query["loginToken"][0])
    assert status == 200 and out["user_id"] == f"@alice.smith:{sso_server.server_name}"
    status, again = await token_login(sso_server, http, query["loginToken"][0])
    assert status == 403 and again["errcode"] == "M_FORBIDDEN"
    profile = await RawClient(http, sso_server.base_url).ok("GET", f"/profile/{out['user_id']}")
    assert profile["displayname"] == "Alice Smith"

    # The same provider user, under a new name at the provider: the same account.
    idp.user["preferred_username"] = "alice-renamed"
    assert (await sso_login(sso_server, http))["user_id"] == out["user_id"]


async def test_names_taken_get_a_number(
    sso_server: RunningServer, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    await sso_server.register("bob")
    idp.user = {"sub": "bob-at-idp", "preferred_username": "Bob"}
    assert (await sso_login(sso_server, http))["user_id"] == f"@bob1:{sso_server.server_name}"
    idp.user = {"sub": "someone", "preferred_username": "Zoë Ünïcode"}
    assert (await sso_login(sso_server, http))[
        "user_id"
    ] == f"@zo=c3=ab=20=c3=bcn=c3=afcode:{sso_server.server_name}"


async def test_existing_users_may_be_linked(
    tmp_path: object, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    async with run_server(
        str(tmp_path), oidc_providers=[idp.provider_config(allow_existing_users=True)]
    ) as srv:
        await srv.register("carol")
        idp.user = {"sub": "carol-at-idp", "preferred_username": "carol"}
        assert (await sso_login(srv, http))["user_id"] == f"@carol:{srv.server_name}"


async def test_a_provider_set_up_by_hand_with_claims_from_userinfo(
    tmp_path: object, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    provider = idp.provider_config(
        discover=False,
        authorization_endpoint=idp.issuer + "/authorize",
        token_endpoint=idp.issuer + "/token",
        userinfo_endpoint=idp.issuer + "/userinfo",
        jwks_uri=idp.issuer + "/jwks",
        client_auth_method="client_secret_post",
        user_profile_method="userinfo_endpoint",
        user_mapping_provider={"config": {"localpart_template": "{{ user.nickname | lower }}"}},
    )
    idp.user = {"sub": "dora-at-idp"}
    idp.pkce = False  # without discovery Sotto cannot know the provider takes PKCE ("auto")
    idp.userinfo_extra = {"nickname": "DoraTheExplorer"}
    async with run_server(str(tmp_path), oidc_providers=[provider]) as srv:
        assert (await sso_login(srv, http))["user_id"] == f"@doratheexplorer:{srv.server_name}"
    request = idp.token_requests[-1]
    assert request["client_secret"] and "code_verifier" not in request  # no PKCE without discovery


@pytest.mark.parametrize("tamper", ["aud", "nonce", "key", "exp", "no-exp"])
async def test_id_tokens_that_do_not_verify_sign_no_one_in(
    sso_server: RunningServer, idp: FakeIdentityProvider, http: aiohttp.ClientSession, tamper: str
) -> None:
    idp.tamper = tamper
    status, page = await Browser(http).sign_in(login_url(sso_server))
    assert status == 400 and "Sign-in failed" in page and "loginToken" not in page
    assert (
        await sso_server.hs.accounts.find_user_case_insensitive(f"@alice.smith:{sso_server.server_name}")
        is None
    )


async def test_callbacks_this_server_did_not_start_are_refused(
    sso_server: RunningServer, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    callback = sso_server.base_url + "/_synapse/client/oidc/callback"
    browser = Browser(http)
    status, headers, _ = await browser.get(login_url(sso_server))
    status, headers, _ = await browser.get(headers["Location"])
    provider_redirect = headers["Location"]
    # No cookie (another browser), a forged cookie, a wrong state: no sign-in.
    status, _, page = await Browser(http).get(provider_redirect)
    assert status == 400 and "not started here" in page
    cookie = browser.cookies["sotto_oidc_session"]
    forged = Browser(http)
    forged.cookies["sotto_oidc_session"] = cookie[:-3] + ("AAA" if not cookie.endswith("AAA") else "BBB")
    assert (await forged.get(provider_redirect))[0] == 400
    wrong_state = Browser(http)
    wrong_state.cookies = dict(browser.cookies)
    other_state = re.sub(r"state=[^&]+", "state=other", provider_redirect)
    assert (await wrong_state.get(other_state))[0] == 400
    # Anything in the state or the cookie is refused, not an error of the server.
    odd = Browser(http)
    odd.cookies = dict(browser.cookies)
    assert (await odd.get(callback + "?code=x&state=%C3%A9t%C3%A9"))[0] == 400
    odd.cookies["sotto_oidc_session"] = cookie.rpartition(".")[0] + ".é"
    assert (await odd.get(provider_redirect))[0] == 400
    # The provider said no.
    denied = Browser(http)
    denied.cookies = dict(browser.cookies)
    state = parse_qs(urlsplit(provider_redirect).query)["state"][0]
    status, _, page = await denied.get(callback + f"?error=access_denied&state={state}")
    assert status == 400 and "did not sign you in" in page
    # The rightful browser still can (the provider's code was not used up).
    status, _, page = await browser.get(provider_redirect)
    assert status == 200 and "loginToken" in page


async def test_a_sign_in_left_too_long_is_refused(
    sso_server: RunningServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = Browser(http)
    status, headers, _ = await browser.get(login_url(sso_server))
    status, headers, _ = await browser.get(headers["Location"])
    clock = sso_server.hs.clock
    later = clock.time_ms() + SESSION_TTL_MS + 1
    monkeypatch.setattr(clock, "time_ms", lambda: later)
    status, _, page = await browser.get(headers["Location"])
    assert status == 400 and "took too long" in page


async def test_deactivated_accounts_do_not_sign_in(
    sso_server: RunningServer, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    alice = await sso_login(sso_server, http)
    await sso_server.hs.accounts.deactivate(alice["user_id"])
    status, page = await Browser(http).sign_in(login_url(sso_server))
    assert status == 400 and "deactivated" in page


async def test_redirect_urls_and_providers_are_checked(
    sso_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = RawClient(http, sso_server.base_url)
    status, out = await client.request("GET", "/login/sso/redirect/oidc-test")
    assert status == 400 and out["errcode"] == "M_MISSING_PARAM"
    status, out = await client.request("GET", "/login/sso/redirect/oidc-test?redirectUrl=javascript:alert(1)")
    assert status == 400 and out["errcode"] == "M_INVALID_PARAM"
    status, _, page = await Browser(http).get(login_url(sso_server, idp_id="nope"))
    assert status == 400 and "no such identity provider" in page


async def test_sso_users_confirm_sensitive_actions_through_the_provider(
    sso_server: RunningServer, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    first = await sso_login(sso_server, http)
    second = await sso_login(sso_server, http)
    alice = RawClient(http, sso_server.base_url, first["access_token"], first["user_id"])
    body = {"devices": [second["device_id"]]}
    status, out = await alice.request("POST", "/delete_devices", json=body)
    assert status == 401 and {"stages": ["m.login.sso"]} in out["flows"]
    session = out["session"]
    fallback = sso_server.base_url + f"/_matrix/client/v3/auth/m.login.sso/fallback/web?session={session}"

    # Another provider user cannot confirm for alice.
    idp.user = {"sub": "mallory", "preferred_username": "mallory"}
    await sso_login(sso_server, http)
    browser = Browser(http)
    status, _, page = await browser.get(fallback)
    assert status == 200 and "sign out one of your devices" in page
    status, page = await browser.sign_in(fallback + "&idp=oidc-test")
    assert status == 400 and "another user" in page
    status, out = await alice.request("POST", "/delete_devices", json={**body, "auth": {"session": session}})
    assert status == 401

    idp.user = dict(ALICE)
    status, page = await Browser(http).sign_in(fallback + "&idp=oidc-test")
    assert status == 200 and "authDone" in page
    status, out = await alice.request("POST", "/delete_devices", json={**body, "auth": {"session": session}})
    assert status == 200, out
    gone = RawClient(http, sso_server.base_url, second["access_token"], second["user_id"])
    assert (await gone.request("GET", "/account/whoami"))[0] == 401


async def test_an_admin_links_accounts_to_the_provider(
    sso_server: RunningServer, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    admin = await user(sso_server, http, "root", admin=True)
    erin = await sso_server.register("erin")
    link = {"external_ids": [{"auth_provider": "oidc-test", "external_id": "erin-at-idp"}]}
    shown = await admin.ok("PUT", f"{A2}/users/{quote(erin)}", json=link)
    assert shown["external_ids"] == link["external_ids"]
    idp.user = {"sub": "erin-at-idp", "preferred_username": "someone-else"}
    assert (await sso_login(sso_server, http))["user_id"] == erin

    # One provider user, one account: a second claim is a conflict, and changes nothing.
    frank = f"@frank:{sso_server.server_name}"
    status, out = await admin.request("PUT", f"{A2}/users/{quote(frank)}", json=link)
    assert status == 409, out
    assert await sso_server.hs.accounts.get_user(frank) is None
    status, out = await admin.request(
        "PUT", f"{A2}/users/{quote(erin)}", json={"external_ids": [{"auth_provider": 1}]}
    )
    assert status == 400 and out["errcode"] == "M_BAD_JSON"
    # Unlinked: the provider user gets an account of their own.
    assert (await admin.ok("PUT", f"{A2}/users/{quote(erin)}", json={"external_ids": []}))[
        "external_ids"
    ] == []
    assert (await sso_login(sso_server, http))["user_id"] == f"@someone-else:{sso_server.server_name}"


async def provider_return(browser: Browser, srv: RunningServer, page_url: str) -> str:
    """From one of the server's pages, through its "Sign in with" link and the provider, back
    to that page with a login token (no "continue to" page on the way: the page asks itself)."""
    status, _, page = await browser.get(page_url)
    found = re.search(r'href="([^"]+)">Sign in with', page)
    assert status == 200 and found, page
    status, headers, _ = await browser.get(srv.base_url + unescape(found.group(1)))
    status, headers, _ = await browser.get(headers["Location"])  # the provider
    status, headers, body = await browser.get(headers["Location"])  # the callback
    assert status == 302, body
    back = headers["Location"]
    assert back.startswith(page_url) and "loginToken=" in back, back
    return back


async def test_oauth_sign_in_through_the_provider(
    tmp_path: object, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    """An account that exists only at the provider signs in to an OAuth 2.0 client: the
    OAuth sign-in page offers the provider, which sends the browser back for the consent."""
    async with run_server(
        str(tmp_path), oidc_providers=[idp.provider_config()], oauth={"enabled": True}
    ) as srv:
        flow = await oauth_start(srv, http)
        browser = Browser(http)
        back = await provider_return(browser, srv, flow.url())
        assert back.startswith(srv.base_url + "/_sotto/oauth2/authorize?")
        status, _, consent = await browser.get(back)
        assert status == 200 and "Test app" in consent and "password" not in consent
        async with http.post(back, data={"action": "allow"}, allow_redirects=False) as resp:
            code = callback_params(resp.headers["Location"], flow.redirect_uri)["code"]
        status, tokens = await flow.exchange(code)
        assert status == 200
        me = RawClient(http, srv.base_url, tokens["access_token"], "")
        assert (await me.ok("GET", "/account/whoami"))["user_id"] == f"@alice.smith:{srv.server_name}"
        # The login token was used up by the consent: the same page cannot mint a second code.
        async with http.post(back, data={"action": "allow"}, allow_redirects=False) as resp:
            assert resp.status == 403


async def test_sso_users_approve_devices_and_resets_through_the_provider(
    tmp_path: object, idp: FakeIdentityProvider, http: aiohttp.ClientSession
) -> None:
    """An account without a password uses the OAuth pages that need a sign-in: the device
    grant's link page (sign-in by QR code) and the account pages."""
    async with run_server(
        str(tmp_path), oidc_providers=[idp.provider_config()], oauth={"enabled": True}
    ) as srv:
        flow = await oauth_start(srv, http)
        async with http.post(
            flow.meta["device_authorization_endpoint"],
            data={
                "client_id": flow.client_id,
                "scope": f"urn:matrix:client:api:* urn:matrix:client:device:{flow.device_id}",
            },
        ) as resp:
            grant = await resp.json()
            assert resp.status == 200, grant
        browser = Browser(http)
        back = await provider_return(browser, srv, grant["verification_uri_complete"])
        status, _, page = await browser.get(back)
        assert status == 200 and grant["user_code"] in page and 'name="password"' not in page
        form = {"user_code": grant["user_code"], "action": "allow"}
        async with http.post(back, data=form) as resp:
            assert resp.status == 200, await resp.text()
        status, tokens = await flow.token(
            grant_type="urn:ietf:params:oauth:grant-type:device_code", device_code=grant["device_code"]
        )
        assert status == 200, tokens
        me = RawClient(http, srv.base_url, tokens["access_token"], f"@alice.smith:{srv.server_name}")
        assert (await me.ok("GET", "/account/whoami"))["user_id"] == me.user_id

        # The same account replaces its cross-signing keys: approved after the provider.
        await me.ok("POST", "/keys/device_signing/upload", json=CrossSigning(me.user_id).upload_body())
        replacement = CrossSigning(me.user_id).upload_body()
        status, body = await me.request("POST", "/keys/device_signing/upload", json=replacement)
        assert status == 401 and body["flows"] == [{"stages": ["m.oauth"]}]
        back = await provider_return(browser, srv, body["params"]["m.oauth"]["url"])
        async with http.post(back, data={}) as resp:
            assert resp.status == 200 and "Reset allowed" in await resp.text()
        retry = {**replacement, "auth": {"session": body["session"]}}
        await me.ok("POST", "/keys/device_signing/upload", json=retry)
        # The login token was used up: the page cannot approve a second reset with it.
        async with http.post(back, data={}) as resp:
            assert resp.status == 403
