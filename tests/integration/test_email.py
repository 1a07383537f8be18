"""Email addresses on accounts and password resets by email, end to end: a real server
sends its validation emails to a real SMTP server (tests/support/smtp.py), and the test
follows the emailed links as a browser would."""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from homeserver.api.register import UIA_KEY
from homeserver.config import ConfigError, config_from_dict
from homeserver.handlers.threepids import ThreepidHandler
from tests.security.support import FakeClock
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server
from tests.support.smtp import SENDER, MailSink, Received, email_config, smtp_server

FROM = SENDER
A1 = "/_synapse/admin/v1"
A2 = "/_synapse/admin/v2"
EMAIL_STAGE = "m.login.email.identity"


@asynccontextmanager
async def email_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[RunningServer, MailSink]]:
    async with smtp_server() as sink, run_server(str(tmp_path), email=email_config(sink), **overrides) as srv:
        yield srv, sink


async def signed_in(
    server: RunningServer, http: aiohttp.ClientSession, localpart: str, password: str
) -> RawClient:
    """A new device of the user (created first if needed), logged in over HTTP."""
    if not await server.hs.accounts.user_exists(f"@{localpart}:{server.server_name}"):
        await server.register(localpart, password)
    body = await login(http, server, {"type": "m.id.user", "user": localpart}, password)
    return RawClient(http, server.base_url, body["access_token"], body["user_id"])


async def login(
    http: aiohttp.ClientSession,
    server: RunningServer,
    identifier: dict[str, str],
    password: str,
    status: int = 200,
) -> dict[str, Any]:
    body = {"type": "m.login.password", "identifier": identifier, "password": password}
    async with http.post(f"{server.base_url}/_matrix/client/v3/login", json=body) as resp:
        out: dict[str, Any] = await resp.json()
        assert resp.status == status, out
        return out


async def request_token(
    http: aiohttp.ClientSession,
    server: RunningServer,
    purpose: str,
    address: str,
    secret: str,
    attempt: int = 1,
    medium: str = "email",
    next_link: str | None = None,
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"client_secret": secret, "send_attempt": attempt}
    if next_link is not None:
        body["next_link"] = next_link
    if medium == "email":
        body["email"] = address
    else:
        body.update(country="GB", phone_number=address)
    url = f"{server.base_url}/_matrix/client/v3/{purpose}/{medium}/requestToken"
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


def link_in(mail: Received) -> str:
    found = re.findall(r"https?://\S+submit_token\?\S+", mail.text)
    assert len(found) == 1, mail.text
    link = str(found[0])
    assert html.escape(link) in mail.html  # the HTML part has the same link
    return link


async def open_link(http: aiohttp.ClientSession, link: str) -> tuple[int, str]:
    """GET the link; a confirmation form on the page is submitted, as its user would."""
    async with http.get(link) as resp:
        status, page = resp.status, await resp.text()
    if "<form" not in page:
        return status, page
    fields = {k: html.unescape(v) for k, v in re.findall(r'name="(\w+)" value="([^"]*)"', page)}
    async with http.post(link, data=fields) as resp:
        return resp.status, await resp.text()


async def redirect_of(http: aiohttp.ClientSession, link: str) -> str:
    """Open the link as open_link does, without following a redirect: where it leads."""
    async with http.get(link, allow_redirects=False) as resp:
        status, location, page = resp.status, resp.headers.get("Location"), await resp.text()
    if "<form" in page:
        fields = {k: html.unescape(v) for k, v in re.findall(r'name="(\w+)" value="([^"]*)"', page)}
        async with http.post(link, data=fields, allow_redirects=False) as resp:
            status, location = resp.status, resp.headers.get("Location")
    assert status == 302 and location, (status, page)
    return location


def password_auth(localpart: str, password: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": localpart},
        "password": password,
    }
    if session:
        auth["session"] = session
    return auth


async def add_threepid(client: RawClient, sid: str, secret: str, password: str) -> tuple[int, Any]:
    body = {"client_secret": secret, "sid": sid}
    status, out = await client.request("POST", "/account/3pid/add", json=body)
    assert status == 401 and out["flows"] == [{"stages": ["m.login.password"]}], out
    localpart = client.user_id[1:].partition(":")[0]
    auth = password_auth(localpart, password, out["session"])
    return await client.request("POST", "/account/3pid/add", json={**body, "auth": auth})


async def admin_call(
    root: RawClient, method: str, path: str, body: Any = None, status: int = 200
) -> dict[str, Any]:
    """An admin API request (RawClient would put the client API's prefix on the path)."""
    headers = {"Authorization": f"Bearer {root.token}"}
    async with root.session.request(method, root.base_url + path, json=body, headers=headers) as resp:
        out: dict[str, Any] = await resp.json()
        assert resp.status == status, (method, path, resp.status, out)
        return out


def threepid_handler(server: RunningServer) -> ThreepidHandler:
    return cast(ThreepidHandler, server.runner.app[UIA_KEY].email)


async def test_add_login_reset_and_delete(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with email_server(tmp_path) as (server, sink):
        alice = await signed_in(server, http, "alice", "old-password")
        other_device = await signed_in(server, http, "alice", "old-password")
        caps = await alice.ok("GET", "/capabilities")
        assert caps["capabilities"]["m.3pid_changes"] == {"enabled": True}

        # Ask for a validation email: the address is stored lower-cased.
        status, out = await request_token(http, server, "account/3pid", " Alice@Example.ORG", "secret-1")
        assert status == 200, out
        sid = out["sid"]
        mail = await sink.wait_for(1)
        assert mail.message["From"] == FROM
        assert mail.message["To"] == "alice@example.org"
        assert mail.rcpt_tos == ["alice@example.org"]
        assert mail.message["Subject"] == f"[{server.server_name}] Validate your email"
        link = link_in(mail)
        assert link.startswith(f"{server.base_url}/_matrix/client/unstable/add_threepid/email/submit_token?")
        assert f"sid={sid}" in link

        # The same client_secret and send_attempt: the same session, no second email.
        assert await request_token(http, server, "account/3pid", "alice@example.org", "secret-1") == (
            200,
            {"sid": sid},
        )
        assert len(sink.messages) == 1

        # Not validated yet: nothing to add.
        status, out = await add_threepid(alice, sid, "secret-1", "old-password")
        assert (status, out["errcode"]) == (400, "M_THREEPID_AUTH_FAILED"), out

        status, page = await open_link(http, link)
        assert status == 200 and "validated" in page, page

        # The wrong client_secret finds no session; the right one adds the address.
        status, out = await add_threepid(alice, sid, "secret-wrong", "old-password")
        assert (status, out["errcode"]) == (400, "M_THREEPID_AUTH_FAILED"), out
        before = int(time.time() * 1000)
        status, out = await add_threepid(alice, sid, "secret-1", "old-password")
        assert (status, out) == (200, {}), out
        listed = (await alice.ok("GET", "/account/3pid"))["threepids"]
        assert [(t["medium"], t["address"]) for t in listed] == [("email", "alice@example.org")]
        assert listed[0]["added_at"] >= before and listed[0]["validated_at"] <= listed[0]["added_at"]
        # The session is used up.
        status, out = await add_threepid(alice, sid, "secret-1", "old-password")
        assert (status, out["errcode"]) == (400, "M_THREEPID_AUTH_FAILED"), out

        # Log in by address (any case); an unknown address is refused as a wrong password is.
        out = await login(
            http,
            server,
            {"type": "m.id.thirdparty", "medium": "email", "address": "ALICE@example.org"},
            "old-password",
        )
        assert out["user_id"] == alice.user_id
        out = await login(
            http,
            server,
            {"type": "m.id.thirdparty", "medium": "email", "address": "nobody@example.org"},
            "old-password",
            403,
        )
        assert out["errcode"] == "M_FORBIDDEN"

        # Forgotten password: the address proves the account.
        status, out = await request_token(http, server, "account/password", "alice@example.org", "secret-2")
        assert status == 200, out
        reset_sid = out["sid"]
        mail = await sink.wait_for(2)
        assert mail.message["Subject"] == f"[{server.server_name}] Password reset"
        assert mail.message["To"] == "alice@example.org"
        reset_link = link_in(mail)
        assert urlsplit(reset_link).path == "/_synapse/client/password_reset/email/submit_token"

        anonymous = RawClient(http, server.base_url)
        change: dict[str, Any] = {"new_password": "new-password"}
        status, out = await anonymous.request("POST", "/account/password", json=change)
        assert status == 401 and {"stages": [EMAIL_STAGE]} in out["flows"], out
        creds = {"sid": reset_sid, "client_secret": "secret-2"}
        email_auth = {"type": EMAIL_STAGE, "threepid_creds": creds, "session": out["session"]}
        status, out = await anonymous.request(
            "POST", "/account/password", json={**change, "auth": email_auth}
        )
        assert (status, out["errcode"]) == (401, "M_THREEPID_AUTH_FAILED"), out

        # Opening the link shows a confirmation form only: that alone validates nothing.
        async with http.get(reset_link) as resp:
            assert resp.status == 200 and "<form" in await resp.text()
        status, out = await anonymous.request(
            "POST", "/account/password", json={**change, "auth": email_auth}
        )
        assert (status, out["errcode"]) == (401, "M_THREEPID_AUTH_FAILED"), out

        status, page = await open_link(http, reset_link)
        assert status == 200 and "validated" in page, page
        status, out = await anonymous.request(
            "POST", "/account/password", json={**change, "auth": email_auth}
        )
        assert (status, out) == (200, {}), out

        await login(http, server, {"type": "m.id.user", "user": "alice"}, "old-password", 403)
        await login(http, server, {"type": "m.id.user", "user": "alice"}, "new-password")
        for device in (alice, other_device):
            status, out = await device.request("GET", "/account/whoami")
            assert (status, out["errcode"]) == (401, "M_UNKNOWN_TOKEN"), out

        # With logout_devices false, the devices stay signed in.
        kept = await signed_in(server, http, "alice", "new-password")
        status, out = await request_token(http, server, "account/password", "alice@example.org", "secret-3")
        assert status == 200, out
        await open_link(http, link_in(await sink.wait_for(3)))
        change = {"new_password": "newer-password", "logout_devices": False}
        email_auth = {"type": EMAIL_STAGE, "threepid_creds": {"sid": out["sid"], "client_secret": "secret-3"}}
        status, out = await anonymous.request(
            "POST", "/account/password", json={**change, "auth": email_auth}
        )
        assert (status, out) == (200, {}), out
        assert (await kept.ok("GET", "/account/whoami"))["user_id"] == alice.user_id
        # A validated session resets a password once: the same link cannot do it again.
        status, out = await anonymous.request(
            "POST", "/account/password", json={**change, "auth": email_auth}
        )
        assert (status, out["errcode"]) == (401, "M_THREEPID_AUTH_FAILED"), out
        await login(http, server, {"type": "m.id.user", "user": "alice"}, "newer-password")

        # Removing the address: no longer listed, no longer a way to log in.
        gone = {"medium": "email", "address": "Alice@example.org"}
        assert await kept.ok("POST", "/account/3pid/delete", json=gone) == {
            "id_server_unbind_result": "no-support"
        }
        assert await kept.ok("GET", "/account/3pid") == {"threepids": []}
        await login(
            http,
            server,
            {"type": "m.id.thirdparty", "medium": "email", "address": "alice@example.org"},
            "newer-password",
            403,
        )


async def test_refusals_and_expiry(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with email_server(tmp_path) as (server, sink):
        alice = await signed_in(server, http, "alice", "password")

        # Resetting the password of an address no account has.
        status, out = await request_token(http, server, "account/password", "nobody@example.org", "s1")
        assert (status, out["errcode"]) == (400, "M_THREEPID_NOT_FOUND"), out
        # Phone numbers stay unsupported.
        status, out = await request_token(http, server, "account/3pid", "07700900001", "s1", medium="msisdn")
        assert (status, out["errcode"]) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED"), out

        # Registering: a free address gets a link to the registration page.
        status, out = await request_token(http, server, "register", "new@example.org", "s2")
        assert status == 200, out
        link = link_in(await sink.wait_for(1))
        assert urlsplit(link).path == "/_matrix/client/unstable/registration/email/submit_token"
        wrong = re.sub(r"token=[^&]+", "token=wrong", link)
        status, page = await open_link(http, wrong)
        assert status == 400 and "invalid" in page, page
        status, page = await open_link(http, link)
        assert status == 200 and "validated" in page, page

        # A later send_attempt sends a new link and the earlier one stops working.
        status, out = await request_token(http, server, "account/3pid", "alice@example.org", "s3")
        assert status == 200, out
        first = link_in(await sink.wait_for(2))
        status, again = await request_token(
            http, server, "account/3pid", "alice@example.org", "s3", attempt=2
        )
        assert (status, again) == (200, out)
        second = link_in(await sink.wait_for(3))
        assert second != first
        status, page = await open_link(http, first)
        assert status == 400, page
        status, page = await open_link(http, second)
        assert status == 200, page

        # Validated, but used after it expired; a link followed after it expired.
        status, late = await request_token(http, server, "account/3pid", "alice2@example.org", "s4")
        assert status == 200, late
        late_link = link_in(await sink.wait_for(4))
        handler = threepid_handler(server)
        real_clock = handler.clock
        handler.clock = FakeClock(time.time() + 2 * 3600)
        status, body = await add_threepid(alice, out["sid"], "s3", "password")
        assert (status, body["errcode"]) == (400, "M_THREEPID_AUTH_FAILED"), body
        status, page = await open_link(http, late_link)
        assert status == 400 and "expired" in page, page
        handler.clock = real_clock

        # Addresses an account has are refused for registering and for adding again.
        await alice.ok("POST", "/account/3pid/delete", json={"medium": "email", "address": "x@example.org"})
        root = await signed_in(server, http, "root", "password")
        await server.hs.accounts.set_admin(root.user_id, True)
        server.hs.auth.invalidate_user(root.user_id)
        bob_id = f"@bob:{server.server_name}"
        bob = {"password": "pw", "threepids": [{"medium": "email", "address": "Bob@Example.org"}]}
        out = await admin_call(root, "PUT", f"{A2}/users/{quote(bob_id)}", bob, status=201)
        assert [(t["medium"], t["address"]) for t in out["threepids"]] == [("email", "bob@example.org")]
        assert (await admin_call(root, "GET", f"{A2}/users/{quote(bob_id)}"))["threepids"][0][
            "address"
        ] == "bob@example.org"
        found = await admin_call(root, "GET", f"{A1}/threepid/email/users/{quote('BOB@example.org')}")
        assert found == {"user_id": bob_id}
        for purpose in ("register", "account/3pid"):
            status, out = await request_token(http, server, purpose, "bob@example.org", "s5")
            assert (status, out["errcode"]) == (400, "M_THREEPID_IN_USE"), (purpose, out)
        carol_id = f"@carol:{server.server_name}"
        carol = {"threepids": [{"medium": "email", "address": "bob@example.org"}]}
        out = await admin_call(root, "PUT", f"{A2}/users/{quote(carol_id)}", carol, status=409)
        assert out["errcode"] == "M_THREEPID_IN_USE", out
        assert not await server.hs.accounts.user_exists(carol_id)  # the conflict changed nothing
        await login(
            http, server, {"type": "m.id.thirdparty", "medium": "email", "address": "bob@example.org"}, "pw"
        )

        # Deactivating the account frees its address.
        await admin_call(root, "POST", f"{A1}/deactivate/{quote(bob_id)}", {})
        path = f"{A1}/threepid/email/users/{quote('bob@example.org')}"
        assert (await admin_call(root, "GET", path, status=404))["errcode"] == "M_NOT_FOUND"
        status, out = await request_token(http, server, "register", "bob@example.org", "s6")
        assert status == 200, out

        # The admin replaces a user's list (here: with none).
        alice_path = f"{A2}/users/{quote(alice.user_id)}"
        await admin_call(
            root, "PUT", alice_path, {"threepids": [{"medium": "email", "address": "a@example.org"}]}
        )
        assert [t["address"] for t in (await alice.ok("GET", "/account/3pid"))["threepids"]] == [
            "a@example.org"
        ]
        long_number = {"medium": "msisdn", "address": "4" * 256}
        out = await admin_call(root, "PUT", alice_path, {"threepids": [long_number]}, status=400)
        assert out["errcode"] == "M_INVALID_PARAM"
        out = await admin_call(root, "PUT", alice_path, {"threepids": []})
        assert out["threepids"] == []
        assert await alice.ok("GET", "/account/3pid") == {"threepids": []}


async def test_sending_is_rate_limited(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Every request is charged (per client and per address) before anything is looked up,
    as in Synapse: the limit bounds emails sent and questions about who has an account."""
    limits = {"enabled": True, "threepid_validation_burst": 3}
    async with email_server(tmp_path, rate_limits=limits) as (server, sink):
        await server.register("alice")
        status, out = await request_token(http, server, "account/password", "x@example.org", "s", 1)
        assert (status, out["errcode"]) == (400, "M_THREEPID_NOT_FOUND")
        status, first = await request_token(http, server, "account/3pid", "a@example.org", "s", 1)
        assert status == 200, first
        # Asking again for a sent attempt sends nothing, and is charged all the same.
        status, again = await request_token(http, server, "account/3pid", "a@example.org", "s", 1)
        assert (status, again["sid"]) == (200, first["sid"])
        for purpose, address, attempt in (
            ("account/3pid", "a@example.org", 2),
            ("account/password", "x@example.org", 1),
        ):
            status, out = await request_token(http, server, purpose, address, "s", attempt)
            assert (status, out["errcode"]) == (429, "M_LIMIT_EXCEEDED"), out
            assert out["retry_after_ms"] > 0
        assert len(sink.messages) == 1


async def test_smtp_login_with_password_file(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    pass_file = tmp_path / "smtp_pass"
    pass_file.write_text("smtp-secret\n")
    os.chmod(pass_file, 0o600)
    async with smtp_server(credentials={"sotto": "smtp-secret"}) as sink:
        config = email_config(sink, smtp_user="sotto", smtp_pass_file=str(pass_file))
        async with run_server(str(tmp_path), email=config) as server:
            status, out = await request_token(http, server, "account/3pid", "a@example.org", "s")
            assert status == 200, out
            assert (await sink.wait_for(1)).login == "sotto"


async def test_smtp_failure_lets_the_client_retry(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with smtp_server(credentials={"sotto": "right"}) as sink:
        config = email_config(sink, smtp_user="sotto", smtp_pass="wrong")
        async with run_server(str(tmp_path), email=config) as server:
            status, out = await request_token(http, server, "account/3pid", "a@example.org", "s")
            assert (status, out["errcode"]) == (500, "M_UNKNOWN"), out
            assert sink.messages == []
            # The failed attempt was not recorded: the same one sends once the server works.
            sink.credentials = {"sotto": "wrong"}
            status, out = await request_token(http, server, "account/3pid", "a@example.org", "s")
            assert status == 200, out
            assert (await sink.wait_for(1)).rcpt_tos == ["a@example.org"]


async def test_a_failed_resend_keeps_the_link_already_sent(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with smtp_server(credentials={"sotto": "right"}) as sink:
        config = email_config(sink, smtp_user="sotto", smtp_pass="right")
        async with run_server(str(tmp_path), email=config) as server:
            status, out = await request_token(http, server, "account/3pid", "a@example.org", "s", 1)
            assert status == 200, out
            first_link = link_in(await sink.wait_for(1))
            sink.credentials = {"sotto": "changed"}
            status, failed = await request_token(http, server, "account/3pid", "a@example.org", "s", 2)
            assert (status, failed["errcode"]) == (500, "M_UNKNOWN"), failed
            status, page = await open_link(http, first_link)
            assert status == 200 and "validated" in page, page


async def test_hostile_addresses_secrets_and_attempts(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with email_server(tmp_path) as (server, sink):
        # Anything a mail header or an SMTP relay could read as more than one mailbox.
        for address in (
            "ceo,x@evil.example",
            "g:ceo,victim%external.example,x@evil.example;",
            "victim%external.example@example.org",
            '"a b"@example.org',
            "a@example.org\r\nBcc: x@evil.example",
            "<a@example.org>",
            "a@[127.0.0.1]",
        ):
            status, out = await request_token(http, server, "account/3pid", address, "s")
            assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), address
        status, out = await request_token(http, server, "account/3pid", "a@example.org", "s", 2**60)
        assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), out
        assert sink.messages == []

        # A validated session is not continued by a resend: that starts a new one.
        status, first = await request_token(http, server, "account/3pid", "a@example.org", "s", 1)
        assert status == 200, first
        await open_link(http, link_in(await sink.wait_for(1)))
        status, second = await request_token(http, server, "account/3pid", "a@example.org", "s", 2)
        assert status == 200 and second["sid"] != first["sid"], second
        alice = await signed_in(server, http, "alice", "pw")
        add = {"client_secret": "s", "sid": first["sid"], "auth": password_auth("alice", "pw")}
        status, out = await alice.request("POST", "/account/3pid/add", json=add)
        assert (status, out["errcode"]) == (400, "M_THREEPID_AUTH_FAILED"), out

        # Secrets outside the spec's grammar are refused, not crashed on.
        link = link_in(await sink.wait_for(2)).replace("client_secret=s", "client_secret=%C3%A9")
        async with http.get(link) as resp:
            assert resp.status == 400
        bad = {"client_secret": "é", "sid": second["sid"], "auth": password_auth("alice", "pw")}
        status, out = await alice.request("POST", "/account/3pid/add", json=bad)
        assert status == 400, out


async def test_next_link_leads_on_after_validation(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with email_server(tmp_path) as (server, sink):
        alice = await signed_in(server, http, "alice", "pw")
        await server.register("bob")
        await threepid_handler(server).store.add(
            f"@bob:{server.server_name}", "email", "bob@example.org", 1, 1
        )
        # Only http(s) URLs with a host, nothing a Location header could be made to carry.
        for bad in (
            "javascript:alert(1)",
            "file:///etc/passwd",
            "ftp://app.example/done",
            "data:text/html,hi",
            "https://",
            "/relative/path",
            "https://app.example/\r\nSet-Cookie: a=b",
            "https://[::1/",
        ):
            status, out = await request_token(
                http, server, "account/3pid", "a@example.org", "s", next_link=bad
            )
            assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), bad
        assert sink.messages == []

        # Adding an address: the followed link sends the browser on, the session is validated.
        done = "https://app.example/done?step=email#top"
        status, out = await request_token(http, server, "account/3pid", "a@example.org", "s", next_link=done)
        assert status == 200, out
        assert await redirect_of(http, link_in(await sink.wait_for(1))) == done
        status, body = await add_threepid(alice, out["sid"], "s", "pw")
        assert (status, body) == (200, {}), body

        # A resend carries its own next_link, as in Synapse (one per token).
        status, first = await request_token(
            http, server, "register", "new@example.org", "r", next_link="http://old.example/"
        )
        assert status == 200, first
        status, second = await request_token(
            http, server, "register", "new@example.org", "r", 2, next_link="https://new.example/x"
        )
        assert second == first
        assert await redirect_of(http, link_in(await sink.wait_for(3))) == "https://new.example/x"

        # A password reset: the confirmation form first (no redirect), then the next_link.
        status, out = await request_token(
            http, server, "account/password", "bob@example.org", "p", next_link=done
        )
        assert status == 200, out
        reset_link = link_in(await sink.wait_for(4))
        async with http.get(reset_link, allow_redirects=False) as resp:
            assert resp.status == 200 and "<form" in await resp.text()
        assert await redirect_of(http, reset_link) == done

        # Without a next_link, the page as before.
        status, out = await request_token(http, server, "account/3pid", "c@example.org", "c")
        assert status == 200, out
        status, page = await open_link(http, link_in(await sink.wait_for(5)))
        assert status == 200 and "validated" in page, page


async def test_next_link_domain_whitelist(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with smtp_server() as sink:
        config = email_config(sink, next_link_domain_whitelist=["App.example"])
        async with run_server(str(tmp_path), email=config) as server:
            for bad in (
                "https://evil.example/",
                "https://app.example.evil.example/",
                "https://evil.example/?app.example",
            ):
                status, out = await request_token(
                    http, server, "register", "a@example.org", "s", next_link=bad
                )
                assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), bad
            assert sink.messages == []
            good = "https://APP.example:8443/welcome"
            status, out = await request_token(http, server, "register", "a@example.org", "s", next_link=good)
            assert status == 200, out
            assert await redirect_of(http, link_in(await sink.wait_for(1))) == good


async def test_allowed_addresses(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """email.allowed_addresses (Synapse's allowed_local_3pids): only matching addresses may
    be registered or added; a password reset is not limited, nor is the admin API."""
    async with smtp_server() as sink:
        email = email_config(sink, allowed_addresses=[r"[^@]+@example\.org"])
        async with run_server(str(tmp_path), email=email, registration={"enabled": True}) as server:
            for purpose in ("register", "account/3pid"):
                status, out = await request_token(http, server, purpose, "bob@elsewhere.example", "s")
                assert (status, out["errcode"]) == (403, "M_THREEPID_DENIED"), (purpose, out)
                # The whole address must match: a lookalike domain is refused too.
                status, out = await request_token(http, server, purpose, "bob@example.org.evil.example", "s")
                assert (status, out["errcode"]) == (403, "M_THREEPID_DENIED"), (purpose, out)
            status, out = await request_token(http, server, "account/3pid", "Bob@Example.org", "s")
            assert status == 200, out
            # An address the admin gave an account, outside the patterns: it can still reset.
            alice = await signed_in(server, http, "alice", "pw")
            root = await signed_in(server, http, "root", "pw")
            await server.hs.accounts.set_admin(root.user_id, True)
            server.hs.auth.invalidate_user(root.user_id)
            outside = {"threepids": [{"medium": "email", "address": "alice@elsewhere.example"}]}
            await admin_call(root, "PUT", f"{A2}/users/{quote(alice.user_id)}", outside)
            status, out = await request_token(
                http, server, "account/password", "alice@elsewhere.example", "s"
            )
            assert status == 200, out
        assert [m.rcpt_tos for m in sink.messages] == [["bob@example.org"], ["alice@elsewhere.example"]]


async def test_email_off_keeps_the_previous_answers(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, out = await request_token(http, server, "account/password", "a@example.org", "s")
    assert (status, out["errcode"]) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
    anonymous = RawClient(http, server.base_url)
    status, out = await anonymous.request("POST", "/account/password", json={"new_password": "x"})
    assert status == 401 and out["flows"] == [{"stages": ["m.login.password"]}], out
    await server.register("alice")
    await login(
        http,
        server,
        {"type": "m.id.thirdparty", "medium": "email", "address": "a@example.org"},
        "password",
        403,
    )
    async with http.get(f"{server.base_url}/_synapse/client/password_reset/email/submit_token") as resp:
        assert resp.status == 404


def test_config_is_checked(tmp_path: Path) -> None:
    base = {"server_name": "example.org"}
    good = {"enabled": True, "notif_from": FROM}
    assert config_from_dict({**base, "email": good}).email.enabled
    bad = [
        ({"enabled": True}, "notif_from"),
        ({**good, "smtp_pass": "x", "smtp_pass_file": "f"}, "not both"),
        ({**good, "force_tls": True, "require_transport_security": True}, "force_tls"),
        ({**good, "validation_token_lifetime_ms": 10}, "validation_token_lifetime_ms"),
        ({**good, "smtp_port": 0}, "smtp_port"),
        ({**good, "smtp_pass_file": str(tmp_path / "missing")}, "smtp_pass_file"),
        ({**good, "smtp_hots": "typo"}, "unknown config key"),
        ({**good, "next_link_domain_whitelist": "app.example"}, "next_link_domain_whitelist"),
        ({**good, "next_link_domain_whitelist": [""]}, "next_link_domain_whitelist"),
        ({**good, "allowed_addresses": "example.org"}, "allowed_addresses"),
        ({**good, "allowed_addresses": ["(unclosed"]}, "not a regular expression"),
    ]
    for email, message in bad:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({**base, "email": email})
    # Listening on every address with no public_baseurl: the emails' links would reach nobody.
    wildcard = {**base, "email": good, "listener": {"bind_address": "0.0.0.0"}}
    with pytest.raises(ConfigError, match="public_baseurl"):
        config_from_dict(wildcard)
    assert config_from_dict({**wildcard, "public_baseurl": "https://matrix.example.org"}).email.enabled
