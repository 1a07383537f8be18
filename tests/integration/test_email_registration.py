"""Registering with an email address (the `m.login.email.identity` stage of POST /register),
end to end: a real server emails its validation links to a real SMTP server
(tests/support/smtp.py), the test opens them as a browser would, and the new account has
the address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from homeserver.config import ConfigError, config_from_dict
from tests.integration.test_email import (
    EMAIL_STAGE,
    FROM,
    email_server,
    link_in,
    login,
    open_link,
    request_token,
)
from tests.support.http import RawClient
from tests.support.server import RunningServer
from tests.support.smtp import MailSink

DUMMY = "m.login.dummy"
TOKEN = "m.login.registration_token"


def stages(body: dict[str, Any]) -> list[list[str]]:
    return [flow["stages"] for flow in body["flows"]]


async def validated(
    http: aiohttp.ClientSession, server: RunningServer, sink: MailSink, address: str, secret: str
) -> dict[str, str]:
    """The threepid_creds of a registration session for `address` whose emailed link was opened."""
    sent = len(sink.messages)
    status, out = await request_token(http, server, "register", address, secret)
    assert status == 200, out
    status, page = await open_link(http, link_in(await sink.wait_for(sent + 1)))
    assert status == 200 and "validated" in page, page
    return {"sid": out["sid"], "client_secret": secret}


def email_auth(creds: dict[str, str], session: str) -> dict[str, Any]:
    return {"type": EMAIL_STAGE, "threepid_creds": creds, "session": session}


async def start(raw: RawClient, username: str, **extra: Any) -> dict[str, Any]:
    """The first request of a registration: 401 with the flows and a session."""
    status, body = await raw.request(
        "POST", "/register", json={"username": username, "password": "pw", **extra}
    )
    assert status == 401 and "session" in body, body
    return dict(body)


async def addresses(
    http: aiohttp.ClientSession, server: RunningServer, registered: dict[str, Any]
) -> list[str]:
    account = RawClient(http, server.base_url, registered["access_token"], registered["user_id"])
    listed = (await account.ok("GET", "/account/3pid"))["threepids"]
    assert all(t["medium"] == "email" and t["validated_at"] <= t["added_at"] for t in listed), listed
    return [t["address"] for t in listed]


async def test_register_with_an_email_address(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with email_server(tmp_path) as (server, sink):
        raw = RawClient(http, server.base_url)
        body = await start(raw, "alice")
        # Optional (as Synapse offers it): every flow also comes with the email stage instead
        # of the dummy one.
        assert stages(body) == [[DUMMY], [TOKEN, DUMMY], [EMAIL_STAGE], [TOKEN, EMAIL_STAGE]]
        session = body["session"]

        status, out = await request_token(http, server, "register", " Alice@Example.ORG", "secret-1")
        assert status == 200, out
        creds = {"sid": out["sid"], "client_secret": "secret-1"}
        mail = await sink.wait_for(1)
        assert mail.message["To"] == "alice@example.org"
        assert "a new account" in mail.text
        link = link_in(mail)

        # The link not opened yet: the stage fails (and may be tried again).
        status, body = await raw.request("POST", "/register", json={"auth": email_auth(creds, session)})
        assert (status, body["errcode"]) == (401, "M_THREEPID_AUTH_FAILED"), body
        assert stages(body)[2] == [EMAIL_STAGE] and "completed" not in body
        # The wrong client_secret finds no session either.
        wrong = {**creds, "client_secret": "secret-wrong"}
        status, body = await raw.request("POST", "/register", json={"auth": email_auth(wrong, session)})
        assert (status, body["errcode"]) == (401, "M_THREEPID_AUTH_FAILED"), body

        status, page = await open_link(http, link)
        assert status == 200 and "validated" in page, page
        status, alice = await raw.request("POST", "/register", json={"auth": email_auth(creds, session)})
        assert status == 200, alice
        assert alice["user_id"] == f"@alice:{server.server_name}" and alice["access_token"]
        assert await addresses(http, server, alice) == ["alice@example.org"]
        out = await login(
            http, server, {"type": "m.id.thirdparty", "medium": "email", "address": "ALICE@example.org"}, "pw"
        )
        assert out["user_id"] == alice["user_id"]

        # The validation session is used up.
        body = await start(raw, "bob")
        status, body = await raw.request(
            "POST", "/register", json={"auth": email_auth(creds, body["session"])}
        )
        assert (status, body["errcode"]) == (401, "M_THREEPID_AUTH_FAILED"), body
        # An address that has an account gets no link.
        status, out = await request_token(http, server, "register", "alice@example.org", "secret-2")
        assert (status, out["errcode"]) == (400, "M_THREEPID_IN_USE"), out

        # Not required: an account without an address.
        body = await start(raw, "carol")
        status, carol = await raw.request(
            "POST", "/register", json={"auth": {"type": DUMMY, "session": body["session"]}}
        )
        assert status == 200, carol
        assert await addresses(http, server, carol) == []


async def test_an_address_taken_meanwhile(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with email_server(tmp_path) as (server, sink):
        raw = RawClient(http, server.base_url)
        # Two validated sessions for one free address (two clients, two secrets).
        first = await validated(http, server, sink, "shared@example.org", "secret-1")
        second = await validated(http, server, sink, "shared@example.org", "secret-2")
        erin = await start(raw, "erin")
        # Someone takes the name while erin opens the link: the stage is done, the account not.
        await server.register("erin")
        status, body = await raw.request(
            "POST", "/register", json={"auth": email_auth(first, erin["session"])}
        )
        assert (status, body["errcode"]) == (400, "M_USER_IN_USE"), body

        # dave registers with the other session: the address is his.
        dave = await start(raw, "dave")
        status, registered = await raw.request(
            "POST", "/register", json={"auth": email_auth(second, dave["session"])}
        )
        assert status == 200, registered
        assert await addresses(http, server, registered) == ["shared@example.org"]

        # erin goes on with another name: the address her session proved is taken now, and no
        # account is made.
        status, body = await raw.request(
            "POST",
            "/register",
            json={"username": "erin2", "password": "pw", "auth": {"session": erin["session"]}},
        )
        assert (status, body["errcode"]) == (400, "M_THREEPID_IN_USE"), body
        assert not await server.hs.accounts.user_exists(f"@erin2:{server.server_name}")
        # A new session for it is refused at the stage already.
        frank = await start(raw, "frank")
        status, body = await raw.request(
            "POST", "/register", json={"auth": email_auth(first, frank["session"])}
        )
        assert (status, body["errcode"]) == (400, "M_THREEPID_IN_USE"), body

        # A proven session used by another registration before this one's account was made:
        # the stage is to be done again.
        third = await validated(http, server, sink, "gina@example.org", "secret-3")
        gina = await start(raw, "gina")
        await server.register("gina")
        status, body = await raw.request(
            "POST", "/register", json={"auth": email_auth(third, gina["session"])}
        )
        assert (status, body["errcode"]) == (400, "M_USER_IN_USE"), body
        harry = await start(raw, "harry")
        status, registered = await raw.request(
            "POST", "/register", json={"auth": email_auth(third, harry["session"])}
        )
        assert status == 200, registered
        status, body = await raw.request(
            "POST",
            "/register",
            json={"username": "gina2", "password": "pw", "auth": {"session": gina["session"]}},
        )
        assert (status, body["errcode"]) == (401, "M_THREEPID_AUTH_FAILED"), body
        assert "completed" not in body and body["session"] == gina["session"]
        fourth = await validated(http, server, sink, "gina2@example.org", "secret-4")
        status, registered = await raw.request(
            "POST", "/register", json={"auth": email_auth(fourth, gina["session"])}
        )
        assert status == 200, registered
        assert registered["user_id"] == f"@gina2:{server.server_name}"
        assert await addresses(http, server, registered) == ["gina2@example.org"]


async def test_required_email(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    registration = {"require_email": True}
    async with email_server(tmp_path, registration=registration, oauth={"enabled": True}) as (server, sink):
        raw = RawClient(http, server.base_url)
        body = await start(raw, "alice")
        assert stages(body) == [[EMAIL_STAGE], [TOKEN, EMAIL_STAGE]]
        # No flow without the address.
        status, out = await raw.request(
            "POST", "/register", json={"auth": {"type": DUMMY, "session": body["session"]}}
        )
        assert (status, out["errcode"]) == (400, "M_UNRECOGNIZED"), out
        status, out = await raw.request("POST", "/register", json={"auth": {"session": body["session"]}})
        assert status == 401 and stages(out) == stages(body), out
        assert not await server.hs.accounts.user_exists(f"@alice:{server.server_name}")

        creds = await validated(http, server, sink, "alice@example.org", "secret-1")
        status, alice = await raw.request(
            "POST", "/register", json={"auth": email_auth(creds, body["session"])}
        )
        assert status == 200, alice
        assert await addresses(http, server, alice) == ["alice@example.org"]

        # The OAuth sign-in page, which asks for no address, offers no registration.
        metadata = await raw.ok("GET", "/_matrix/client/v1/auth_metadata")
        assert "prompt_values_supported" not in metadata


async def test_registration_token_and_email(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    registration = {"requires_token": True, "require_email": True}
    async with email_server(tmp_path, registration=registration) as (server, sink):
        await server.hs.accounts.create_registration_token("once", 1, None)
        raw = RawClient(http, server.base_url)
        body = await start(raw, "alice")
        assert stages(body) == [[TOKEN, EMAIL_STAGE]]
        session = body["session"]
        creds = await validated(http, server, sink, "alice@example.org", "secret-1")
        # The token comes first.
        status, out = await raw.request("POST", "/register", json={"auth": email_auth(creds, session)})
        assert (status, out["errcode"]) == (401, "M_FORBIDDEN"), out
        token_auth = {"type": TOKEN, "token": "once", "session": session}
        status, out = await raw.request("POST", "/register", json={"auth": token_auth})
        assert status == 401 and out["completed"] == [TOKEN], out
        status, alice = await raw.request("POST", "/register", json={"auth": email_auth(creds, session)})
        assert status == 200, alice
        assert await addresses(http, server, alice) == ["alice@example.org"]
        validity = "/_matrix/client/v1/register/m.login.registration_token/validity"
        assert await raw.ok("GET", validity, params={"token": "once"}) == {"valid": False}


async def test_optional_email_with_required_token(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with email_server(tmp_path, registration={"requires_token": True}) as (server, _sink):
        await server.hs.accounts.create_registration_token("once", 1, None)
        raw = RawClient(http, server.base_url)
        body = await start(raw, "alice")
        assert stages(body) == [[TOKEN, DUMMY], [TOKEN, EMAIL_STAGE]]
        for auth in ({"type": TOKEN, "token": "once"}, {"type": DUMMY}):
            status, out = await raw.request(
                "POST", "/register", json={"auth": {**auth, "session": body["session"]}}
            )
        assert status == 200, out
        assert await addresses(http, server, out) == []


async def test_a_guest_upgraded_with_an_address(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with email_server(tmp_path, registration={"allow_guests": True}) as (server, sink):
        raw = RawClient(http, server.base_url)
        status, guest = await raw.request("POST", "/register?kind=guest", json={})
        assert status == 200, guest
        localpart = guest["user_id"][1:].partition(":")[0]
        body = await start(raw, localpart, guest_access_token=guest["access_token"])
        creds = await validated(http, server, sink, "guest@example.org", "secret-1")
        status, out = await raw.request(
            "POST", "/register", json={"auth": email_auth(creds, body["session"])}
        )
        assert status == 200 and out["user_id"] == guest["user_id"], out
        assert await addresses(http, server, out) == ["guest@example.org"]


def test_require_email_needs_email() -> None:
    base = {"server_name": "example.org"}
    with pytest.raises(ConfigError, match=r"registration\.require_email needs email\.enabled"):
        config_from_dict({**base, "registration": {"require_email": True}})
    with pytest.raises(ConfigError, match=r"registration\.require_email must be true or false"):
        config_from_dict({**base, "registration": {"require_email": "yes"}})
    email = {"enabled": True, "notif_from": FROM}
    config = config_from_dict({**base, "email": email, "registration": {"require_email": True}})
    assert config.registration.require_email
