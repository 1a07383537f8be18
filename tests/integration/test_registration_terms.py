"""Terms of service at registration (`registration.terms`, the `m.login.terms` stage), end to
end on a real server: every registration flow ends with the stage, its params carry the
policies (in every 401, those after a stage was undone too), the account records the version
accepted (the admin API's consent_version and consent_ts): the one presented, and if the
server's changed meanwhile the stage is asked again with the new one. The OAuth sign-in
page's registration form asks for the same with a box, and the stage's fallback page
(GET/POST /auth/m.login.terms/fallback/web) shows the policies and accepts them."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.config import ConfigError, TermsConfig, config_from_dict
from tests.integration.test_oauth import callback_params, register_in_page, start
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

DUMMY = "m.login.dummy"
TOKEN = "m.login.registration_token"
TERMS = "m.login.terms"
POLICIES = {
    "terms_of_service": {
        "en": {"name": "Terms of Service", "url": "https://example.org/terms-1.2-en.html"},
        "fr": {"name": "Conditions d'utilisation", "url": "https://example.org/terms-1.2-fr.html"},
    },
    "privacy_policy": {"en": {"name": "Privacy Policy", "url": "https://example.org/privacy-1.2.html"}},
}
CONFIG = {"version": "1.2", "policies": POLICIES}
PARAMS = {
    TERMS: {
        "policies": {
            "terms_of_service": {"version": "1.2", **POLICIES["terms_of_service"]},
            "privacy_policy": {"version": "1.2", **POLICIES["privacy_policy"]},
        }
    }
}
# What the operator changes them to in the middle of a registration.
NEW_TERMS = TermsConfig(
    "2.0",
    {"terms_of_service": {"en": {"name": "Terms of Service", "url": "https://example.org/terms-2.0.html"}}},
)
FALLBACK = "/_matrix/client/v3/auth/m.login.terms/fallback/web"


def stages(body: dict[str, Any]) -> list[list[str]]:
    return [flow["stages"] for flow in body["flows"]]


async def begin(raw: RawClient, username: str, **extra: Any) -> dict[str, Any]:
    status, body = await raw.request(
        "POST", "/register", json={"username": username, "password": "pw", **extra}
    )
    assert status == 401 and "session" in body, body
    return dict(body)


async def stage(raw: RawClient, session: str, auth: dict[str, Any]) -> tuple[int, Any]:
    return await raw.request("POST", "/register", json={"auth": {**auth, "session": session}})


async def admin_view(server: RunningServer, http: aiohttp.ClientSession, user_id: str) -> dict[str, Any]:
    """GET /_synapse/admin/v2/users/{user_id}, as the server's admin."""
    admin = f"@root:{server.server_name}"
    if not await server.hs.accounts.user_exists(admin):
        await server.register("root", admin=True)
    token, _ = await server.hs.auth.create_session(admin, None, None)
    url = f"{server.base_url}/_synapse/admin/v2/users/{quote(user_id)}"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def test_every_flow_ends_with_the_terms(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), registration={"terms": CONFIG}) as server:
        raw = RawClient(http, server.base_url)
        body = await begin(raw, "alice")
        assert stages(body) == [[DUMMY, TERMS], [TOKEN, DUMMY, TERMS]]
        assert body["params"] == PARAMS
        session = body["session"]
        # The dummy stage alone is no complete flow: the server asks on, for the terms.
        status, out = await stage(raw, session, {"type": DUMMY})
        assert status == 401 and out["completed"] == [DUMMY] and TERMS in out["params"], out
        assert not await server.hs.accounts.user_exists(f"@alice:{server.server_name}")
        before = server.hs.clock.time_ms()
        status, out = await stage(raw, session, {"type": TERMS})
        assert status == 200 and out["user_id"] == f"@alice:{server.server_name}", out
        assert "access_token" in out

        view = await admin_view(server, http, out["user_id"])
        assert view["consent_version"] == "1.2"
        assert before <= view["consent_ts"] <= server.hs.clock.time_ms()
        # Accounts made by the operator were never asked.
        view = await admin_view(server, http, f"@root:{server.server_name}")
        assert view["consent_version"] is None and view["consent_ts"] is None


async def test_the_terms_cannot_be_skipped_or_taken_first(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with run_server(str(tmp_path), registration={"terms": CONFIG}) as server:
        raw = RawClient(http, server.base_url)
        session = (await begin(raw, "bob"))["session"]
        # Stages go in flow order: the terms come last.
        status, out = await stage(raw, session, {"type": TERMS})
        assert status == 401 and out["errcode"] == "M_FORBIDDEN" and "completed" not in out, out
        status, out = await stage(raw, session, {"type": DUMMY})
        assert status == 401 and out["completed"] == [DUMMY]
        # Sending the dummy stage again finishes nothing.
        status, out = await stage(raw, session, {"type": DUMMY})
        assert status == 401 and out["completed"] == [DUMMY]
        assert not await server.hs.accounts.user_exists(f"@bob:{server.server_name}")
        # Elsewhere than registration the stage is unknown.
        me = await server.login("carol")
        account = RawClient(http, server.base_url, me["access_token"], me["user_id"])
        status, out = await account.request(
            "POST", "/account/deactivate", json={"auth": {"type": TERMS, "session": "x"}}
        )
        assert status == 400 and out["errcode"] == "M_UNRECOGNIZED", out
        assert await server.hs.accounts.user_exists(f"@carol:{server.server_name}")


async def test_registration_token_then_terms(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    registration = {"requires_token": True, "terms": CONFIG}
    async with run_server(str(tmp_path), registration=registration) as server:
        await server.hs.accounts.create_registration_token("letmein", 1, None)
        raw = RawClient(http, server.base_url)
        body = await begin(raw, "dave")
        assert stages(body) == [[TOKEN, DUMMY, TERMS]]
        session = body["session"]
        assert (await stage(raw, session, {"type": TOKEN, "token": "letmein"}))[0] == 401
        assert (await stage(raw, session, {"type": DUMMY}))[0] == 401
        status, out = await stage(raw, session, {"type": TERMS})
        assert status == 200, out
        assert (await admin_view(server, http, out["user_id"]))["consent_version"] == "1.2"


async def test_a_guest_upgraded_with_the_terms(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    registration = {"allow_guests": True, "terms": CONFIG}
    async with run_server(str(tmp_path), registration=registration) as server:
        raw = RawClient(http, server.base_url)
        status, guest = await raw.request("POST", "/register?kind=guest", json={})
        assert status == 200, guest
        localpart = guest["user_id"][1:].split(":")[0]
        body = await begin(raw, localpart, guest_access_token=guest["access_token"])
        assert (await stage(raw, body["session"], {"type": DUMMY}))[0] == 401
        status, out = await stage(raw, body["session"], {"type": TERMS})
        assert status == 200 and out["user_id"] == guest["user_id"], out
        view = await admin_view(server, http, guest["user_id"])
        assert view["is_guest"] is False and view["consent_version"] == "1.2"


async def test_without_terms_nothing_changes(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = RawClient(http, server.base_url)
    body = await begin(raw, "erin")
    assert stages(body) == [[DUMMY], [TOKEN, DUMMY]] and body["params"] == {}
    status, out = await stage(raw, body["session"], {"type": DUMMY})
    assert status == 200, out
    view = await admin_view(server, http, out["user_id"])
    assert view["consent_version"] is None and view["consent_ts"] is None
    # The stage is not offered, so not accepted either.
    status, out = await stage(raw, (await begin(raw, "frank"))["session"], {"type": TERMS})
    assert status == 400 and out["errcode"] == "M_UNRECOGNIZED", out


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({"policies": POLICIES}, "registration.terms.version is required"),
        ({"version": 1.2, "policies": POLICIES}, "registration.terms.version is required"),
        ({"version": "1"}, "registration.terms.policies"),
        ({"version": "1", "policies": {}}, "registration.terms.policies"),
        ({"version": "1", "policies": {"tos": {}}}, "registration.terms.policies.tos"),
        (
            {"version": "1", "policies": {"tos": {"en": {"url": "https://x.org/t"}}}},
            "tos.en.name is required",
        ),
        ({"version": "1", "policies": {"tos": {"en": {"name": "T"}}}}, "tos.en.url is required"),
        (
            {"version": "1", "policies": {"tos": {"en": {"name": "T", "url": "javascript:alert(1)"}}}},
            "tos.en.url is required, as an http:// or https:// URL",
        ),
        ({"version": "1", "policies": {"tos": {"en": {"name": "T", "url": "ftp://x.org/t"}}}}, "tos.en.url"),
        (
            {"version": "1", "policies": {"tos": {"version": "2"}}},
            "the version is registration.terms.version",
        ),
        ({"version": "1", "policies": POLICIES, "enabled": True}, "registration.terms: expected a mapping"),
        ("yes", "registration.terms: expected a mapping"),
    ],
)
def test_config_errors(terms: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config_from_dict({"server_name": "example.org", "registration": {"terms": terms}})


def test_config_off_by_default() -> None:
    assert config_from_dict({"server_name": "example.org"}).registration.terms is None
    terms = config_from_dict(
        {"server_name": "example.org", "registration": {"terms": CONFIG}}
    ).registration.terms
    assert terms is not None and terms.version == "1.2" and terms.policies == POLICIES


async def test_the_sign_in_page_asks_to_accept_the_terms(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), oauth={"enabled": True}, registration={"terms": CONFIG}) as server:
        flow = await start(server, http)
        async with http.get(
            flow.url(prompt="create"), headers={"Accept-Language": "fr-CH, en;q=0.8"}
        ) as page:
            text = await page.text()
        # Each policy once, in the reader's language where the operator has it.
        assert 'name="accept_terms"' in text and "required" in text
        assert '<input type="hidden" name="terms_version" value="1.2">' in text
        assert "https://example.org/terms-1.2-fr.html" in text and "terms-1.2-en" not in text
        assert "https://example.org/privacy-1.2.html" in text
        # Without the box ticked (a form that bypassed the browser's check), no account.
        resp = await register_in_page(flow, "grace", "a good passphrase")
        assert resp.status == 400 and "Location" not in resp.headers
        assert not await server.hs.accounts.user_exists(f"@grace:{server.server_name}")
        resp = await register_in_page(
            flow, "grace", "a good passphrase", accept_terms="1", terms_version="1.2"
        )
        assert resp.status == 302
        code = callback_params(resp.headers["Location"], flow.redirect_uri)["code"]
        assert (await flow.exchange(code))[0] == 200
        view = await admin_view(server, http, f"@grace:{server.server_name}")
        assert view["consent_version"] == "1.2" and view["consent_ts"] is not None


async def test_the_sign_in_page_without_terms(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), oauth={"enabled": True}) as server:
        flow = await start(server, http)
        async with http.get(flow.url(prompt="create")) as page:
            assert "accept_terms" not in await page.text()
        assert (await register_in_page(flow, "heidi", "a good passphrase")).status == 302
        view = await admin_view(server, http, f"@heidi:{server.server_name}")
        assert view["consent_version"] is None


async def test_a_stage_undone_asks_again_with_the_policies(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    registration = {"requires_token": True, "terms": CONFIG}
    async with run_server(str(tmp_path), registration=registration) as server:
        await server.hs.accounts.create_registration_token("once", 1, None)
        raw = RawClient(http, server.base_url)
        first, second = (await begin(raw, "ivan"))["session"], (await begin(raw, "judy"))["session"]
        # Both pass the token stage while the token has a use left; the first registers.
        for session in (first, second):
            assert (await stage(raw, session, {"type": TOKEN, "token": "once"}))[0] == 401
            assert (await stage(raw, session, {"type": DUMMY}))[0] == 401
        assert (await stage(raw, first, {"type": TERMS}))[0] == 200
        # The second's token stage is undone (used up meanwhile), and the stages after it: they
        # are asked again, the terms with the policies to show.
        status, out = await stage(raw, second, {"type": TERMS})
        assert status == 401 and out["errcode"] == "M_UNAUTHORIZED" and "completed" not in out, out
        assert out["session"] == second and out["params"] == PARAMS
        assert stages(out) == [[TOKEN, DUMMY, TERMS]]
        assert not await server.hs.accounts.user_exists(f"@judy:{server.server_name}")


async def test_terms_changed_during_a_registration_are_asked_again(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with run_server(str(tmp_path), registration={"terms": CONFIG}) as server:
        raw = RawClient(http, server.base_url)
        session = (await begin(raw, "kim"))["session"]
        assert (await stage(raw, session, {"type": DUMMY}))[0] == 401
        # The operator publishes new terms: version 1.2 was presented, so accepting is refused
        # and the new version presented.
        server.hs.config.registration.terms = NEW_TERMS
        status, out = await stage(raw, session, {"type": TERMS})
        assert status == 401 and out["errcode"] == "M_FORBIDDEN" and out["completed"] == [DUMMY], out
        assert out["params"][TERMS]["policies"]["terms_of_service"]["version"] == "2.0"
        assert not await server.hs.accounts.user_exists(f"@kim:{server.server_name}")
        status, out = await stage(raw, session, {"type": TERMS})
        assert status == 200, out
        assert (await admin_view(server, http, out["user_id"]))["consent_version"] == "2.0"


async def test_the_version_recorded_is_the_one_accepted(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), registration={"terms": CONFIG}) as server:
        raw = RawClient(http, server.base_url)
        session = (await begin(raw, "liam"))["session"]
        assert (await stage(raw, session, {"type": DUMMY}))[0] == 401
        await server.register("liam")  # the name is taken meanwhile
        status, out = await stage(raw, session, {"type": TERMS})
        assert status == 400 and out["errcode"] == "M_USER_IN_USE", out
        # The session's stages are done (version 1.2 accepted); the client tries another name
        # after the server's terms changed: the account records what its user accepted.
        server.hs.config.registration.terms = NEW_TERMS
        status, out = await raw.request(
            "POST", "/register", json={"username": "liam2", "password": "pw", "auth": {"session": session}}
        )
        assert status == 200 and out["user_id"] == f"@liam2:{server.server_name}", out
        assert (await admin_view(server, http, out["user_id"]))["consent_version"] == "1.2"


async def test_the_sign_in_page_refuses_terms_changed_meanwhile(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with run_server(str(tmp_path), oauth={"enabled": True}, registration={"terms": CONFIG}) as server:
        flow = await start(server, http)
        url = flow.url(prompt="create")
        async with http.get(url) as page:
            assert 'name="terms_version" value="1.2"' in await page.text()
        server.hs.config.registration.terms = NEW_TERMS
        form = {"username": "mia", "password": "a good passphrase", "register": "1", "action": "allow"}
        async with http.post(url, data={**form, "accept_terms": "1", "terms_version": "1.2"}) as resp:
            text = await resp.text()
        # Shown again, with the new terms to accept.
        assert resp.status == 400 and "The terms have changed" in text, text
        assert "https://example.org/terms-2.0.html" in text and 'value="2.0"' in text
        assert not await server.hs.accounts.user_exists(f"@mia:{server.server_name}")
        data = {**form, "accept_terms": "1", "terms_version": "2.0"}
        async with http.post(url, data=data, allow_redirects=False) as resp:
            assert resp.status == 302
        view = await admin_view(server, http, f"@mia:{server.server_name}")
        assert view["consent_version"] == "2.0"


async def fallback(
    http: aiohttp.ClientSession, server: RunningServer, method: str, **fields: str
) -> tuple[int, str]:
    url = server.base_url + FALLBACK
    if method == "GET":
        request = http.get(url, params=fields)
    else:
        request = http.post(url, data=fields)
    async with request as resp:
        return resp.status, await resp.text()


async def test_the_fallback_page(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    terms = {
        "version": "1.2",
        "policies": {
            **POLICIES,
            "rules": {"en": {"name": "<b>Rules</b> & co", "url": "https://example.org/r?a=1&b=2"}},
        },
    }
    async with run_server(str(tmp_path), registration={"terms": terms}) as server:
        raw = RawClient(http, server.base_url)
        session = (await begin(raw, "nina"))["session"]
        # Not before the stages that come first.
        status, text = await fallback(http, server, "GET", session=session)
        assert status == 400 and "other steps" in text
        status, _ = await fallback(http, server, "POST", session=session, terms_version="1.2")
        assert status == 400
        assert (await stage(raw, session, {"type": DUMMY}))[0] == 401

        status, text = await fallback(http, server, "GET", session=session)
        assert status == 200, text
        # Every policy, named and linked, escaped; the form carries the session and the version.
        assert "https://example.org/terms-1.2-en.html" in text and "Terms of Service" in text
        assert "https://example.org/privacy-1.2.html" in text and "Privacy Policy" in text
        assert "&lt;b&gt;Rules&lt;/b&gt; &amp; co" in text and "<b>Rules" not in text
        assert "https://example.org/r?a=1&amp;b=2" in text
        assert f'name="session" value="{session}"' in text and 'name="terms_version" value="1.2"' in text
        assert 'method="post"' in text
        # Nothing is done by looking.
        status, out = await raw.request("POST", "/register", json={"auth": {"session": session}})
        assert status == 401 and out["completed"] == [DUMMY], out

        status, text = await fallback(http, server, "POST", session=session, terms_version="1.2")
        assert status == 200, text
        assert "window.onAuthDone" in text and '"authDone"' in text
        # The client retries with the session alone.
        status, out = await raw.request("POST", "/register", json={"auth": {"session": session}})
        assert status == 200 and out["user_id"] == f"@nina:{server.server_name}", out
        assert (await admin_view(server, http, out["user_id"]))["consent_version"] == "1.2"

        # Unknown or missing sessions (that one is used up too) are a 400 page.
        for fields in ({"session": "nosuchsession"}, {}, {"session": session}):
            status, text = await fallback(http, server, "GET", **fields)
            assert status == 400 and "expired" in text, text
            status, text = await fallback(http, server, "POST", **fields, terms_version="1.2")
            assert status == 400 and "expired" in text, text


async def test_the_fallback_page_refuses_terms_changed_meanwhile(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with run_server(str(tmp_path), registration={"terms": CONFIG}) as server:
        raw = RawClient(http, server.base_url)
        session = (await begin(raw, "omar"))["session"]
        assert (await stage(raw, session, {"type": DUMMY}))[0] == 401
        assert (await fallback(http, server, "GET", session=session))[0] == 200
        server.hs.config.registration.terms = NEW_TERMS
        status, text = await fallback(http, server, "POST", session=session, terms_version="1.2")
        # Shown again with the new terms; the stage is not done.
        assert status == 400 and "The terms have changed" in text, text
        assert "https://example.org/terms-2.0.html" in text and 'name="terms_version" value="2.0"' in text
        status, out = await raw.request("POST", "/register", json={"auth": {"session": session}})
        assert status == 401 and out["completed"] == [DUMMY], out
        status, text = await fallback(http, server, "POST", session=session, terms_version="2.0")
        assert status == 200, text
        status, out = await raw.request("POST", "/register", json={"auth": {"session": session}})
        assert status == 200, out
        assert (await admin_view(server, http, out["user_id"]))["consent_version"] == "2.0"


async def test_no_fallback_page_without_terms(server: RunningServer, http: aiohttp.ClientSession) -> None:
    raw = RawClient(http, server.base_url)
    session = (await begin(raw, "pat"))["session"]
    assert (await fallback(http, server, "GET", session=session))[0] == 404
